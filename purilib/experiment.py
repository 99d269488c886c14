"""Running a table's grid and writing its record.

``run_table`` trains (or loads from cache) one model per (attack, seed), gives
each defense the same clean subset, and writes one JSON record per cell to
``<output_dir>/records/`` as soon as the cell finishes, so an interrupted run
loses at most the cell in progress and a rerun skips finished cells.
``summarize`` turns records into the table (mean ± std over seeds) beside the
published numbers; ``write_outputs`` saves ``table.csv``, ``table.md`` and the
figure.
"""
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import settings
from .data import clean_subset
from .defenses import NO_DEFENSE, create_defense
from .metrics import defense_effectiveness_rating, evaluate
from .profiles import defense_overrides, get_profile, training_settings
from .provenance import code_version, resolve_device
from .tables import get_table, published
from .training import load_training_data, restore_attack, train_backdoored_model


def output_dir_for(table_id, profile, output_dir=None) -> Path:
    return Path(output_dir) if output_dir else settings.results_dir() / table_id / profile


def _check_names(requested, allowed, kind, table):
    unknown = [name for name in requested if name not in allowed]
    if unknown:
        raise ValueError(f"{table.id}: unknown {kind} {unknown}; this table has {list(allowed)}")


def run_table(table_id, profile="smoke", attacks=None, defenses=None, seeds=1, device="auto",
              data_root=None, cache_dir=None, output_dir=None, progress=True) -> pd.DataFrame:
    table, prof = get_table(table_id), get_profile(profile)
    attacks = list(attacks or table.attacks)
    defenses = list(defenses or table.defenses)
    _check_names(attacks, table.attacks, "attacks", table)
    _check_names(defenses, table.defenses, "defenses", table)
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ValueError(f"seeds must be a positive integer, not {seeds!r}")
    device = resolve_device(device)
    out = output_dir_for(table_id, profile, output_dir)
    (out / "records").mkdir(parents=True, exist_ok=True)
    records = []
    for seed in range(seeds):
        for attack_name in attacks:
            model, manifest = train_backdoored_model(attack=attack_name, seed=seed, device=device,
                                                     data_root=data_root, cache_dir=cache_dir,
                                                     **training_settings(prof, attack_name))
            train, _, test, attack, _, reserved = load_training_data(manifest["config"], data_root, cache_dir,
                                                                     device)
            restore_attack(attack, manifest, cache_dir)
            clean = clean_subset(train, reserved, prof.clean_per_class, seed=seed)
            before = evaluate(model, test, attack, device=device, bf16=prof.bf16)
            for defense_name in defenses:
                records.append(_run_cell(table, prof, attack_name, attack, defense_name, seed, model, manifest,
                                         clean, test, before, device, out, progress))
    return pd.DataFrame(records)


def _run_cell(table, prof, attack_name, attack, defense_name, seed, model, manifest, clean, test, before,
              device, out, progress):
    path = out / "records" / f"{attack_name}__{defense_name.replace(' ', '_')}__seed{seed}.json"
    overrides = {} if defense_name == NO_DEFENSE else defense_overrides(prof, defense_name)
    defense = None
    if defense_name != NO_DEFENSE:
        defense = create_defense(defense_name, device=device, bf16=prof.bf16, seed=seed, progress=progress,
                                 **overrides)
    # a finished record is reused only if model, clean data and the defense's full settings match
    identity = {"model_key": manifest["key"], "clean_checksum": clean.checksum(),
                "defense_config": defense.config if defense else {}}
    if path.exists():
        record = json.loads(path.read_text())
        if all(record.get(k) == v for k, v in identity.items()):
            return record  # finished in an earlier run
    trainable, seconds, after = 0, 0.0, before
    if defense is not None:
        purified = defense.purify(model, clean)
        after = evaluate(purified, test, attack, device=device, bf16=prof.bf16)
        trainable, seconds = defense.stats["trainable_params"], defense.stats["seconds"]
    der = np.nan
    if attack is not None:
        der = defense_effectiveness_rating(before["asr"], after["asr"], before["acc"], after["acc"])
    record = {
        "table": table.id, "profile": prof.name, "attack": attack_name, "defense": defense_name, "seed": seed,
        "acc": after["acc"], "asr": after.get("asr", np.nan), "ra": after.get("ra", np.nan), "der": der,
        "acc_before": before["acc"], "asr_before": before.get("asr", np.nan), "seconds": round(seconds, 2),
        "trainable_params": trainable, "overrides": overrides, **identity,
        "clean_images": len(clean), "training_config": manifest["config"],
        "code_version": code_version(), "torch": torch.__version__, "device": device,
        "host": platform.machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1, default=float))
    partial.replace(path)
    return record


def load_records(output_dir) -> pd.DataFrame:
    return pd.DataFrame([json.loads(p.read_text()) for p in sorted(Path(output_dir).glob("records/*.json"))])


def summarize(records: pd.DataFrame, table_id: str) -> pd.DataFrame:
    """One row per (attack, defense): mean and std over seeds, beside the paper's numbers."""
    table = get_table(table_id)
    paper = published(table)
    rows = []
    for (attack, defense), group in records.groupby(["attack", "defense"], sort=False):
        row = {"attack": attack, "defense": defense, "seeds": len(group)}
        for metric in ("acc", "asr", "ra", "der", "seconds"):
            values = group[metric].astype(float)
            row[metric] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(group) > 1 else np.nan
        reference = paper.get((attack, defense), {})
        row["paper_acc"], row["paper_asr"] = reference.get("acc", np.nan), reference.get("asr", np.nan)
        row["delta_acc"], row["delta_asr"] = row["acc"] - row["paper_acc"], row["asr"] - row["paper_asr"]
        rows.append(row)
    summary = pd.DataFrame(rows)
    order = {name: i for i, name in enumerate(table.attacks)}, {name: i for i, name in enumerate(table.defenses)}
    summary = summary.sort_values(["attack", "defense"], key=lambda s: s.map(order[0] if s.name == "attack" else order[1]))
    return summary.reset_index(drop=True)


def _cell(mean, std, digits=1):
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}")


def to_markdown(summary: pd.DataFrame, title: str, profile: str) -> str:
    lines = [f"# {title}", "", f"Profile `{profile}`. Ours = this run (mean ± std over seeds); "
             "paper = published; Δ = ours − paper. Percent; DER in [0, 1].", "",
             "| Attack | Defense | ASR ours | ASR paper | ΔASR | ACC ours | ACC paper | ΔACC | RA | DER | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.attack} | {r.defense} | {_cell(r.asr, r.asr_std)} | {_cell(r.paper_asr, np.nan)} | "
                     f"{_cell(r.delta_asr, np.nan)} | {_cell(r.acc, r.acc_std)} | {_cell(r.paper_acc, np.nan)} | "
                     f"{_cell(r.delta_acc, np.nan)} | {_cell(r.ra, r.ra_std)} | {_cell(r.der, r.der_std, 3)} | "
                     f"{_cell(r.seconds, np.nan, 0)} |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, title: str):
    """ASR against ACC per defense: filled = ours, hollow = paper."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    attacked = summary[summary["asr"].notna()]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    palette = dict(zip(attacked["defense"].unique(), sns.color_palette("tab10")))
    markers = dict(zip(attacked["attack"].unique(), "oXsD^vP*<>"))
    sns.scatterplot(data=attacked, x="acc", y="asr", hue="defense", style="attack", palette=palette,
                    markers=markers, s=90, ax=ax)
    for r in attacked.itertuples():
        if not pd.isna(r.paper_asr):
            ax.scatter(r.paper_acc, r.paper_asr, marker=markers[r.attack], facecolors="none",
                       edgecolors=palette[r.defense], s=90)
    ax.set(xlabel="clean accuracy ACC (%)", ylabel="attack success rate ASR (%)", ylim=(-5, 105),
           title=title + "\nfilled: this run, hollow: paper")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def write_outputs(records: pd.DataFrame, table_id: str, profile: str, output_dir=None):
    """Write table.csv, table.md and asr_vs_acc.png; return (summary, figure)."""
    table = get_table(table_id)
    out = output_dir_for(table_id, profile, output_dir)
    summary = summarize(records, table_id)
    summary.round(3).to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(to_markdown(summary, f"{table.paper}, {table.title}", profile))
    figure = plot(summary, f"{table.paper} {table.id} ({profile})")
    figure.savefig(out / "asr_vs_acc.png", dpi=120)
    import matplotlib.pyplot as plt
    plt.close(figure)  # shown where the notebook asks for it, not twice
    return summary, figure


def rounded_summary(summary: pd.DataFrame) -> str:
    """A short, stable text of the table (integers) for nbval to compare across runs."""
    lines = []
    for r in summary.itertuples():
        asr = "-" if pd.isna(r.asr) else f"{r.asr:.0f}"
        lines.append(f"{r.attack:<10} {r.defense:<11} ACC {r.acc:5.0f}  ASR {asr:>4}")
    return "\n".join(lines)
