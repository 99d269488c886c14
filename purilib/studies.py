"""The NFT study (table ``nft-study``): what NFT's masks did in each variation, and what the study finds.

The grid itself is an ordinary table (``tables.NFT_STUDY_VARIANTS``: each column is NFT at other
settings), run by ``experiment.run``; ``reports`` writes its files (the study's report); each record keeps the masks' statistics NFT reports
(``defense_stats``).  Here: those statistics as a table, and the findings in plain words, computed
from the numbers (nothing in them is written by hand).
"""
import numpy as np
import pandas as pd

from .defenses import NO_DEFENSE

REMOVED_ASR = 10.0  # a backdoor counts as removed at an ASR of at most this many percent


def mask_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, variant): ACC / ASR / RA and the masks' statistics (mean over all mask
    entries' layer means, the lowest layer mean, the share of entries under 0.5)."""
    rows = []
    for r in records[records["defense"] != NO_DEFENSE].itertuples():
        stats = r.defense_stats if isinstance(getattr(r, "defense_stats", None), dict) else {}
        means = stats.get("mask_mean_per_layer") or [np.nan]
        entries = stats.get("mask_entries") or np.nan
        network = r.network if isinstance(getattr(r, "network", None), str) else ""
        rows.append({"network": network, "attack": r.attack, "variant": r.defense, "seed": r.seed, "acc": r.acc, "asr": r.asr,
                     "ra": r.ra, "acc_before": r.acc_before, "asr_before": r.asr_before,
                     "mask_layers": len(means) if stats else np.nan,
                     "mean_of_layer_means": float(np.mean(means)), "lowest_layer_mean": float(np.min(means)),
                     "below_half_percent": 100.0 * stats.get("masks_below_half", np.nan) / entries,
                     "seconds": r.seconds})
    return pd.DataFrame(rows)


def findings(masks: pd.DataFrame) -> str:
    """The study's answer per attack, in sentences made from the numbers."""
    lines = []
    if "network" not in masks:  # a mask table made without networks: one, unnamed
        masks = masks.assign(network="")
    several = masks["network"].nunique() > 1 if len(masks) else False  # networks side by side: named
    for (network, attack), group in masks.groupby(["network", "attack"], sort=False):
        group = group.groupby("variant", sort=False)[["acc", "asr", "acc_before", "asr_before",
                                                       "below_half_percent"]].mean()
        first = group.iloc[0]
        name = f"{attack} on {network}" if several else attack
        text = [f"**{name}** (before purification: ACC {first.acc_before:.1f}, ASR {first.asr_before:.1f})."]
        if "released" in group.index:
            r = group.loc["released"]
            text.append(f"NFT as released: ACC {r.acc:.1f}, ASR {r.asr:.1f}, {r.below_half_percent:.1f}% of the "
                        "mask entries under 0.5.")
        removed = group[group["asr"] <= REMOVED_ASR]
        if len(removed):
            text.append(f"ASR at most {REMOVED_ASR:.0f}% with: " + "; ".join(
                f"{v} (ACC {r.acc:.1f}, ASR {r.asr:.1f})" for v, r in removed.iterrows()) + ".")
        else:
            text.append(f"No variant brings the ASR to {REMOVED_ASR:.0f}% or below.")
        best = group["asr"].idxmin()
        text.append(f"Lowest ASR: {best}, ASR {group.loc[best, 'asr']:.1f} at ACC {group.loc[best, 'acc']:.1f}.")
        lines.append(" ".join(text))
    return "\n\n".join(lines)


def mask_markdown(masks: pd.DataFrame) -> str:
    """``mask_table`` as a Markdown table (ACC / ASR / RA in %, masks' statistics)."""
    several = masks["network"].nunique() > 1 if "network" in masks and len(masks) else False
    lines = ["| Attack | Variant | ACC | ASR | RA | mask layers | mean of layer means | lowest layer mean "
             "| entries < 0.5 (%) | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in masks.itertuples():
        lines.append(f"| {r.attack}{f' ({r.network})' if several else ''} | {r.variant} | {r.acc:.1f} | {r.asr:.1f} | {r.ra:.1f} | {r.mask_layers:.0f} | "
                     f"{r.mean_of_layer_means:.3f} | {r.lowest_layer_mean:.3f} | {r.below_half_percent:.1f} | "
                     f"{r.seconds:.0f} |")
    return "\n".join(lines) + "\n"
