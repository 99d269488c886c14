"""A table's records as its summary, its Markdown and its heat map.

``summarize`` turns records into the table (mean ± std over seeds) beside the published numbers;
``to_markdown``, ``average_drop_markdown`` and ``sharpness_markdown`` lay it out; ``plot`` draws ASR and ACC
as heat maps; ``write_grid`` saves ``table.csv``, ``table.md`` and ``asr_acc.png``.
"""
import csv
from importlib import resources

import numpy as np
import pandas as pd

from ..defenses import NO_DEFENSE
from ..hessian import SHARPNESS_PROTOCOLS
from ..tables import get_table, published
from ..training import TRAINING_FORMAT
from .protocols import protocol_markdown

PAPER_CLEAN_PER_CLASS = 50  # the seed papers' 1% of CIFAR-10's training set


def summarize(records: pd.DataFrame, table_id: str, papers_amount=PAPER_CLEAN_PER_CLASS) -> pd.DataFrame:
    """One row per (network, attack, defense, clean images per class): mean and std over seeds, beside the
    paper's numbers, which stand beside the rows with ``papers_amount`` clean images per class (the
    profile's own amount: the papers' 1%); other amounts (one-shot, ...) have no published cell."""
    table = get_table(table_id)
    paper = published(table, table.dataset)
    rows = []
    for (network, attack, defense, per_class), group in records.groupby(
            ["network", "attack", "defense", "clean_per_class"], sort=False):
        row = {"network": network, "attack": attack, "defense": defense, "clean_per_class": per_class,
               "seeds": len(group)}
        for metric in ("acc", "asr", "ra", "der", "seconds"):
            values = group[metric].astype(float)
            row[metric] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(group) > 1 else np.nan
        for metric in ("lambda_max", "trace", "trace_se"):  # tables that measure sharpness
            if metric in group:
                values = group[metric].astype(float)
                row[metric], row[f"{metric}_std"] = values.mean(), values.std(ddof=1) if len(group) > 1 else np.nan
        if "sharpness" in group:  # each protocol's (hessian.SHARPNESS_PROTOCOLS), mean over seeds; a spectrum's
            # lambda_max (FIP Figure 1) is no protocol's sharpness measurement
            for protocol in SHARPNESS_PROTOCOLS:
                for metric in ("lambda_max", "trace"):
                    values = [m[protocol][metric] for m in group["sharpness"] if isinstance(m, dict) and protocol in m]
                    row[f"{metric}_{protocol}"] = float(np.mean(values)) if values else np.nan
        if "sharpness_protocol" in group:
            row["sharpness_protocol"] = group["sharpness_protocol"].iloc[0]
        row["trainable_params"] = int(group["trainable_params"].iloc[0])
        reference = paper.get((attack, defense), {}) if per_class == papers_amount else {}
        row["paper_acc"], row["paper_asr"] = reference.get("acc", np.nan), reference.get("asr", np.nan)
        row["paper_source"] = reference.get("source", "")
        if "lambda_max" in row:
            row["paper_lambda_max"] = reference.get("lambda_max", np.nan)
            row["paper_trace"] = reference.get("trace_hessian", np.nan)
        formats = [c.get("format", 0) for c in group["training_config"] if isinstance(c, dict)] \
            if "training_config" in group else []
        row["training_format"] = min(formats) if formats else TRAINING_FORMAT
        row["delta_acc"], row["delta_asr"] = row["acc"] - row["paper_acc"], row["asr"] - row["paper_asr"]
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(table.attacks)}, {name: i for i, name in enumerate(table.defenses)}
    networks = {name: i for i, name in enumerate(dict.fromkeys([*table.models, *summary["network"]]))}
    keys = {"attack": order[0], "defense": order[1], "network": networks}
    summary = summary.sort_values(["network", "clean_per_class", "attack", "defense"],
                                  ascending=[True, False, True, True],
                                  key=lambda s: s if s.name == "clean_per_class" else s.map(keys[s.name]))
    return summary.reset_index(drop=True)


def _cell(mean, std, digits=1):
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def to_markdown(summary: pd.DataFrame, title: str, profile: str) -> str:
    lines = [f"# {title}", "", f"Profile `{profile}`. Ours = this run (mean ± std over seeds); "
             "paper = published (its source: paper and table); Δ = ours − paper. Percent; DER in [0, 1].", "",
             "| Attack | Defense | clean/class | ASR ours | ASR paper | ΔASR | ACC ours | ACC paper | ΔACC | RA | DER "
             "| seconds | trained params | paper source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    old = "training_format" in summary and (summary["training_format"] < TRAINING_FORMAT).any()
    networks = summary["network"].nunique() > 1 if "network" in summary else False
    for r in summary.itertuples():
        mark = " †" if old and r.training_format < TRAINING_FORMAT else ""
        mark += f" ({r.network})" if networks else ""
        lines.append(f"| {r.attack}{mark} | {r.defense} | {r.clean_per_class} | {_cell(r.asr, r.asr_std)} | "
                     f"{_cell(r.paper_asr, np.nan)} | "
                     f"{_cell(r.delta_asr, np.nan)} | {_cell(r.acc, r.acc_std)} | {_cell(r.paper_acc, np.nan)} | "
                     f"{_cell(r.delta_acc, np.nan)} | {_cell(r.ra, r.ra_std)} | {_cell(r.der, r.der_std, 3)} | "
                     f"{_cell(r.seconds, np.nan, 0)} | {r.trainable_params:,} | "
                     f"{getattr(r, 'paper_source', '') or '–'} |")
    if old:
        lines += ["", "† made with an earlier training format (before 5: He et al.'s PreAct-ResNet-18, with a final "
                  "BN + ReLU after the last block; not yet retrained with the field's network)."]
    return "\n".join(lines) + "\n"


def average_drop(summary: pd.DataFrame, table_id: str) -> pd.DataFrame:
    """Per defense: the mean drop in ASR and in ACC from 'No defense' over the attacks it ran on (Benign
    left out), ours beside the paper's over the same attacks (recomputed from its cells), and, where the
    paper prints an "Avg. Drop" row (NFT Table 1), that row and its own recomputation over all attacks."""
    table = get_table(table_id)
    printed = {}
    if "nft_table1.csv" in table.reference_files:  # a table compared with NFT Table 1's cells
        text = resources.files("purilib.references").joinpath("nft_table1_avgdrop.csv").read_text()
        printed = {r["defense"]: r for r in csv.DictReader(text.splitlines()) if r["dataset"] == table.dataset}
    frame = summary[summary["attack"] != "Benign"]
    keys = ["network", "attack", "clean_per_class"]  # a row's drop is from its own network's and amount's model
    base = frame[frame["defense"] == NO_DEFENSE].set_index(keys)
    rows = []
    for (network, defense, per_class), group in frame[frame["defense"] != NO_DEFENSE].groupby(
            ["network", "defense", "clean_per_class"], sort=False):
        group = group.set_index(keys)
        attacks = [a for a in group.index if a in base.index]
        ours = {m: np.mean([base.loc[a, m] - group.loc[a, m] for a in attacks]) if attacks else np.nan
                for m in ("asr", "acc")}
        # the paper's cells as the summary attached them: only at the paper's amount of clean data
        same = [k for k in attacks if not pd.isna(base.loc[k, "paper_asr"]) and not pd.isna(group.loc[k, "paper_asr"])]
        theirs = {m: np.mean([base.loc[k, f"paper_{m}"] - group.loc[k, f"paper_{m}"] for k in same]) if same
                  else np.nan for m in ("asr", "acc")}
        p = printed.get(defense, {}) if same else {}
        rows.append({"network": network, "defense": defense, "clean_per_class": per_class,
                     "attacks": len(attacks),
                     "asr_drop": ours["asr"], "acc_drop": ours["acc"],
                     "paper_asr_drop_same_attacks": theirs["asr"], "paper_acc_drop_same_attacks": theirs["acc"],
                     "paper_asr_drop_printed": float(p.get("asr_drop_printed") or np.nan),
                     "paper_acc_drop_printed": float(p.get("acc_drop_printed") or np.nan),
                     "paper_asr_drop_recomputed": float(p.get("asr_drop_recomputed") or np.nan),
                     "paper_acc_drop_recomputed": float(p.get("acc_drop_recomputed") or np.nan)})
    return pd.DataFrame(rows)


def average_drop_markdown(drops: pd.DataFrame) -> str:
    lines = ["## Average drop from 'No defense' (ASR / ACC, points)", "",
             "Ours over the attacks this run has; the paper's recomputed from its cells over the same attacks; "
             "the paper's printed \"Avg. Drop\" row and the mean of its own cells over all 14 attacks (they "
             "differ for some defenses, as printed).", "",
             "| Defense | clean/class | attacks | ours | paper, same attacks | paper printed | paper recomputed |",
             "|---|---|---|---|---|---|---|"]
    networks = drops["network"].nunique() > 1 if len(drops) else False
    for r in drops.itertuples():
        pair = lambda a, b: "–" if pd.isna(a) else f"{a:.1f} / {b:.1f}"  # noqa: E731
        name = f"{r.defense} ({r.network})" if networks else r.defense
        lines.append(f"| {name} | {r.clean_per_class} | {r.attacks} | {pair(r.asr_drop, r.acc_drop)} | "
                     f"{pair(r.paper_asr_drop_same_attacks, r.paper_acc_drop_same_attacks)} | "
                     f"{pair(r.paper_asr_drop_printed, r.paper_acc_drop_printed)} | "
                     f"{pair(r.paper_asr_drop_recomputed, r.paper_acc_drop_recomputed)} |")
    return "\n".join(lines) + "\n"


SHARPNESS_NOTE = {
    "authors": "the FIP authors' protocol: one batch of clean training images (seen in training; 200, the smoke "
               "profile 40), crop (padding 1) + flip, eval mode, power iteration and Hutchinson to a relative tolerance of 1e-3 "
               "(at most 100 steps each; the profile may cap them lower)",
    "held-out": "the full-batch loss over the defenses' clean set (the reserve the model never saw), no "
                "augmentation, a fixed number of power iterations and Hutchinson samples"}


def sharpness_markdown(summary: pd.DataFrame, title: str, profile: str) -> str:
    """The sharpness columns (FIP Table 6): lambda_max and the Hessian's trace of each protocol beside the
    paper's, with ASR / ACC; then the reductions (backdoored / purified) beside the paper's."""
    protocols = [p for p in SHARPNESS_PROTOCOLS if f"lambda_max_{p}" in summary and
                 summary[f"lambda_max_{p}"].notna().any()]
    lines = [f"# {title}", "", f"Profile `{profile}`. lambda_max: the Hessian's largest eigenvalue (power iteration); "
             "trace: Hutchinson's estimate (means over seeds) of the mean cross-entropy, by each protocol:", ""]
    lines += [f"- **{p}**: {SHARPNESS_NOTE[p]}." for p in protocols] + ["", "ASR / ACC in %.", ""]
    head = " | ".join([f"λmax {p}" for p in protocols] + ["λmax paper"] + [f"trace {p}" for p in protocols]
                      + ["trace paper"])
    lines += [f"| Attack | Defense | {head} | ASR ours | ASR paper | ACC ours | ACC paper |",
              "|---|---|" + "---|" * (2 * len(protocols) + 6)]
    for r in summary.to_dict("records"):
        cells = [_cell(r[f"lambda_max_{p}"], np.nan, 2) for p in protocols] + [_cell(r["paper_lambda_max"], np.nan, 2)]
        cells += [_cell(r[f"trace_{p}"], np.nan, 1) for p in protocols] + [_cell(r["paper_trace"], np.nan, 1)]
        lines.append(f"| {r['attack']} | {r['defense']} | " + " | ".join(cells) + f" | {_cell(r['asr'], r['asr_std'])} | "
                     f"{_cell(r['paper_asr'], np.nan)} | {_cell(r['acc'], r['acc_std'])} | {_cell(r['paper_acc'], np.nan)} |")
    ratios = sharpness_ratios(summary, protocols)
    if len(ratios):
        lines += ["", "## Flattening: lambda_max of the backdoored model / lambda_max after the defense", "",
                  "| Attack | Defense | " + " | ".join(f"ours, {p}" for p in protocols) + " | paper |",
                  "|---|---|" + "---|" * (len(protocols) + 1)]
        times = lambda value: "–" if pd.isna(value) else f"{value:.1f}x"  # noqa: E731
        for r in ratios.to_dict("records"):
            lines.append(f"| {r['attack']} | {r['defense']} | " + " | ".join(times(r[p]) for p in protocols)
                         + f" | {times(r['paper'])} |")
    return "\n".join(lines) + "\n"


def sharpness_ratios(summary: pd.DataFrame, protocols) -> pd.DataFrame:
    """Per attack and defense: lambda_max before any defense / after it, by each protocol and in the paper."""
    rows = []
    for (network, attack, per_class), group in summary.groupby(["network", "attack", "clean_per_class"], sort=False):
        base = group[group["defense"] == NO_DEFENSE]
        if base.empty:
            continue
        base = base.iloc[0]
        for r in group[group["defense"] != NO_DEFENSE].to_dict("records"):
            rows.append({"attack": attack, "defense": r["defense"],
                         **{p: base[f"lambda_max_{p}"] / r[f"lambda_max_{p}"] for p in protocols},
                         "paper": base["paper_lambda_max"] / r["paper_lambda_max"]})
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, title: str):
    """Heat maps of ASR and ACC, attacks x defenses (this run); the paper's numbers are in table.md."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    frame = summary.copy()
    several = frame["clean_per_class"].nunique() > 1
    networks = frame["network"].nunique() > 1 if "network" in frame else False
    frame["row"] = [a + (f" {n}" if networks else "") + (f" ({k}/class)" if several else "")
                    for a, k, n in zip(frame["attack"], frame["clean_per_class"],
                                       frame.get("network", frame["attack"]))]
    rows, columns = list(dict.fromkeys(frame["row"])), list(dict.fromkeys(frame["defense"]))
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.3 * len(columns), 1.2 + 0.42 * len(rows)), squeeze=False)
    for ax, metric, cmap in zip(axes[0], ("asr", "acc"), ("Reds", "Blues")):
        grid = frame.pivot(index="row", columns="defense", values=metric).reindex(index=rows, columns=columns)
        sns.heatmap(grid, annot=True, fmt=".0f", cmap=cmap, vmin=0, vmax=100, cbar=False, ax=ax,
                    annot_kws={"fontsize": 8})
        ax.set(title=f"{metric.upper()} (%)", xlabel="", ylabel="")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def compact_png(figure, dpi=80, colors=32) -> bytes:
    """The figure as a palette PNG (``colors`` colours): what a notebook embeds, a quarter of a plain
    PNG's bytes, so that the executed notebook, the record of the run, stays small.  The full-quality
    figure is the file ``write_grid`` (or the table's report) saves."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=colors)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def write_grid(records: pd.DataFrame, table_id: str, profile: str, out, papers_amount=PAPER_CLEAN_PER_CLASS):
    """Write table.csv, table.md (the grid, its average drops or its sharpness, the protocols) and
    asr_acc.png into ``out``; return (summary, heat map)."""
    table = get_table(table_id)
    summary = summarize(records, table_id, papers_amount)
    summary.round(3).to_csv(out / "table.csv", index=False)
    text = to_markdown(summary, f"{table.paper}, {table.title}", profile)
    if "sharpness" in table.measures:
        text = sharpness_markdown(summary, f"{table.paper}, {table.title}", profile) + "\n" + text
    elif not table.variants:
        drops = average_drop(summary, table_id)
        if len(drops):  # a table of models before any defense (FIP Figure 1) has none
            text += "\n" + average_drop_markdown(drops)
    text += "\n" + protocol_markdown(records, table_id)
    (out / "table.md").write_text(text)
    figure = plot(summary, f"{table.paper} {table.id} ({profile})")
    figure.savefig(out / "asr_acc.png", dpi=120)
    import matplotlib.pyplot as plt
    plt.close(figure)  # shown where the notebook asks for it, not twice
    return summary, figure


def table_outline(summary: pd.DataFrame) -> str:
    """The table's shape for nbval to compare across machines: which cells were measured, and that
    their numbers are percentages.  The numbers themselves are not compared: a tiny smoke model's
    ACC / ASR move with the CPU thread count (one SIG model: ASR 60 at 2 threads, 86 elsewhere), so
    they are checked by tests with bounds instead."""
    networks = summary["network"].nunique() > 1 if "network" in summary else False
    keys = ["network", "attack", "clean_per_class"] if networks else ["attack", "clean_per_class"]
    width = 19 if networks else 10
    lines = [f"{' '.join(str(v) for v in key[:-1]):<{width}} {key[-1]:>3}/class  " + ", ".join(group["defense"])
             for key, group in summary.groupby(keys, sort=False)]
    return "\n".join(lines + [f"{len(summary)} cells; ACC and ASR within [0, 100]: {percentages_valid(summary)}"])


def percentages_valid(table: pd.DataFrame) -> bool:
    """ACC is a percentage everywhere; ASR too where defined (NaN for the benign model)."""
    asr = table["asr"].dropna()
    return bool(table["acc"].between(0, 100).all() and asr.between(0, 100).all())


def runtime_ratios(summary: pd.DataFrame, reference="NFT") -> pd.DataFrame:
    """Wall seconds of each defense divided by ``reference``'s on the same model (rows: defenses,
    columns: attacks), for the rows where the reference ran."""
    timed = summary[summary["defense"] != NO_DEFENSE]
    seconds = timed.pivot_table(index="defense", columns=["attack", "clean_per_class"], values="seconds")
    if reference not in seconds.index:
        raise ValueError(f"no '{reference}' rows to compare wall times with")
    return seconds.div(seconds.loc[reference], axis=1)
