"""AWM (Chai & Chen, "One-shot Neural Backdoor Erasing via Adversarial Weight Masking", NeurIPS 2022),
Table 1: how backdoor removal depends on the amount of clean data, on two networks.

The grid is ``Table.clean_amounts`` (clean images per class) x ``Table.models`` x attacks x defenses
(``experiment.run_table`` runs it); this module only lays the summary out: one line per (network,
attack, defense) with ASR / ACC at each amount, and a figure of both against the amount.
"""
import numpy as np


def markdown(summary) -> str:
    """Rows (network, attack, defense), columns the amounts of clean data (most first): 'ASR / ACC'."""
    amounts = sorted(summary["clean_per_class"].unique(), reverse=True)
    lines = ["| Network | Attack | Defense | " + " | ".join(f"{k}/class ASR / ACC" for k in amounts) + " |",
             "|---|---|---|" + "---|" * len(amounts)]
    for (network, attack, defense), group in summary.groupby(["network", "attack", "defense"], sort=False):
        cells = {k: g.iloc[0] for k, g in group.groupby("clean_per_class")}
        row = []
        for k in amounts:
            r = cells.get(k)
            asr = "–" if r is None or np.isnan(r["asr"]) else f"{r['asr']:.1f}"
            row.append("–" if r is None else f"{asr} / {r['acc']:.1f}")
        lines.append(f"| {network} | {attack} | {defense} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(summary, title):
    """One panel per (network, attack): each defense's ASR (solid) and ACC (dashed) against the clean
    images per class (log scale)."""
    import matplotlib.pyplot as plt
    panels = list(summary.groupby(["network", "attack"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.0), squeeze=False)
    colours = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(summary["defense"]))}
    for ax, ((network, attack), group) in zip(axes[0], panels):
        for defense, curve in group.groupby("defense", sort=False):
            curve = curve.sort_values("clean_per_class")
            ax.plot(curve["clean_per_class"], curve["asr"], "o-", color=colours[defense], ms=3, label=defense)
            ax.plot(curve["clean_per_class"], curve["acc"], "s--", color=colours[defense], ms=3)
        ax.set(title=f"{network}: {attack}", xscale="log", ylim=(0, 100), xlabel="clean images per class")
    axes[0][0].set_ylabel("ASR (solid), ACC (dashed), %")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # shown where the notebook asks for it (a small copy), not twice
    return fig
