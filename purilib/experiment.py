"""Running a table's grid and writing its record.

``run_table`` trains (or loads from cache) one model per (attack, seed), gives
each defense the same clean subset, and writes one JSON record per cell to
``<output_dir>/records/`` as soon as the cell finishes, so an interrupted run
loses at most the cell in progress and a rerun skips finished cells.
``summarize`` turns records into the table (mean ± std over seeds) beside the
published numbers; ``write_outputs`` saves ``table.csv``, ``table.md`` and the
figure.
"""
import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from .defenses import NO_DEFENSE
from .cells import (as_json, column_defense, prepare_row, record_path, resolve_profile,  # noqa: F401 (re-exported)
                    run_cell, snapshot_every)
from .profiles import training_settings
from .devices import cpu_cores, cpu_threads, resolve_device
from .hessian import SHARPNESS_PROTOCOLS
from .provenance import code_version
from .reports.protocols import protocol_markdown  # noqa: F401 (re-exported for the notebooks)
from .spec import RunSpec, output_dir_for  # noqa: F401 (output_dir_for re-exported)
from .tables import get_table, published
from .training import TRAINING_FORMAT


code_version()  # pinned at import: what this process runs (see provenance.code_version)

PAPER_CLEAN_PER_CLASS = 50  # the seed papers' 1% of CIFAR-10's training set


def run_table(table_id, profile="smoke", attacks=None, defenses=None, seeds=1, device="auto",
              data_root=None, cache_dir=None, output_dir=None, progress=True, clean_per_class=None,
              from_records=False, model=None, workers="auto", executor="local", ray_address=None) -> pd.DataFrame:
    """Run the grid; ``clean_per_class`` (default: the table's, else the profile's, 50 = the papers' 1%)
    sets how many clean images of each class every defense gets: 1 is the one-shot setting.  ``from_records``:
    train and run nothing, tabulate the records already in ``output_dir`` (made on another machine,
    a GPU one say); each must match the requested cell's training recipe and defense settings.
    ``model``: the network every model of the grid is (default: the table's networks, else the profile's,
    the one the paper names); e.g. "resnet18", the NFT / FIP authors' own; several (a list, or names
    separated by commas): a grid of each, side by side in the table.  A table over amounts of clean
    data (``Table.clean_amounts``) runs each amount the profile reserves, unless ``clean_per_class``
    names one.  ``workers`` / ``executor``: see :mod:`purilib.executor` (several local processes, one
    GPU each where there are GPUs; or a Ray cluster); the records are the same whatever runs them.
    ``workers="auto"``: on the CPU, with a profile that fixes the threads per process (smoke: 1), one
    worker per that many cores; else 1."""
    spec = RunSpec.build(table_id, profile, attacks=attacks, defenses=defenses, seeds=seeds,
                         clean_per_class=clean_per_class, model=model, device=device, data_root=data_root,
                         cache_dir=cache_dir, output_dir=output_dir, workers=workers, executor=executor,
                         ray_address=ray_address, from_records=from_records, progress=progress)
    return run(spec)


def run_parameters(namespace: dict) -> dict:
    """The run's settings among a notebook's variables (its papermill parameters cell): the keywords of
    ``run_table`` it defines, so that a notebook runs its table in one call,
    ``run_table(TABLE, **run_parameters(globals()))``."""
    import inspect
    names = set(inspect.signature(run_table).parameters) - {"table_id"}
    return {name: namespace[name] for name in names if name in namespace}


def run(spec: RunSpec) -> pd.DataFrame:
    """Run (or, ``spec.from_records``, tabulate) a checked :class:`RunSpec`; return the table's records."""
    table, prof, out = spec.table, spec.profile, spec.output_dir
    attacks, defenses, seeds, profile = list(spec.attacks), list(spec.defenses), spec.seeds, prof.name
    data_root, cache_dir, progress = spec.data_root, spec.cache_dir, spec.progress
    if spec.from_records:
        records, missing = [], []
        for network, k in spec.grids:
            recipe = resolve_profile(profile, network, table.dataset)
            found, lacking = _recorded_cells(table, recipe, attacks, defenses, seeds, k, out)
            records, missing = records + found, missing + lacking
        if missing:
            raise ValueError(f"{table.id} ({prof.name}) from records: {len(missing)} cells cannot be tabulated: "
                             + "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        return pd.DataFrame(records)
    (out / "records").mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    grids = list(spec.grids)
    workers = resolve_workers(spec.workers, prof, device, rows=len(attacks) * seeds * len(spec.networks))
    with cpu_threads(prof.threads if device == "cpu" else None):  # every worker computes with this count
        if workers != 1 or spec.executor != "local":
            from .executor import run_parallel
            records = run_parallel(table, profile, grids, attacks, defenses, seeds, device, data_root, cache_dir,
                                   out, workers=workers, executor=spec.executor, ray_address=spec.ray_address,
                                   progress=progress)
        else:
            records = [record for network, k in grids for record in _run_grid(
                table, profile, network, attacks, defenses, seeds, k, device, data_root, cache_dir, out, progress)]
    reused = sum(bool(r.pop("reused", False)) for r in records)
    print(f"{table.id} ({prof.name}): {len(records) - reused} cells computed, {reused} reused from "
          f"{out / 'records'} (same weights, code and settings)")
    return merge_records(load_records(out), pd.DataFrame(records))


def _run_grid(table, profile, network, attacks, defenses, seeds, clean_per_class, device, data_root, cache_dir,
              out, progress) -> list:
    """The cells of one network and one amount of clean data, here, one after another."""
    prof, records = resolve_profile(profile, network, table.dataset), []
    for seed in range(seeds):
        for attack_name in attacks:
            row = prepare_row(prof, attack_name, seed, clean_per_class, device, data_root, cache_dir,
                              snapshots=snapshot_every(table, prof))
            for defense_name in defenses:
                records.append(run_cell(table, prof, attack_name, defense_name, seed, row, device, out, progress,
                                        cache_dir=cache_dir))
    return records


def resolve_workers(workers, prof, device, rows) -> int:
    """``workers`` as a count: "auto" is one worker per ``prof.threads`` cores on the CPU (at most one per
    model of the table's grids) when the profile fixes the threads, else 1."""
    if workers != "auto":
        if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
            raise ValueError(f"workers must be a positive integer or 'auto', not {workers!r}")
        return workers
    if device == "cpu" and prof.threads:
        return max(1, min(cpu_cores() // prof.threads, rows))
    return 1


def _with_row_keys(records: pd.DataFrame) -> pd.DataFrame:
    """A copy with ``clean_per_class`` and ``network`` filled in (records written before they existed)."""
    records = records.copy()
    if "clean_per_class" not in records:
        records["clean_per_class"] = np.nan
    records["clean_per_class"] = records["clean_per_class"].fillna(records["clean_images"] // 10).astype(int)
    if "network" not in records:
        records["network"] = None
    configs = records["training_config"] if "training_config" in records else [None] * len(records)
    records["network"] = [n if isinstance(n, str) else c.get("model", "") if isinstance(c, dict) else ""
                          for n, c in zip(records["network"], configs)]
    return records


def merge_records(earlier: pd.DataFrame, latest: pd.DataFrame) -> pd.DataFrame:
    """The table's records: ``latest`` (this run's cells) with the ``earlier`` ones of the folder that it
    does not replace, so that a partial run adds its rows to the table instead of replacing it.  A row
    (attack, seed, clean images per class) never mixes models: where its records were computed from
    different weights, only those of the latest run (else of the latest finished record) are kept."""
    if len(earlier) and "finished" in earlier:
        earlier = earlier.sort_values("finished", ascending=False, kind="stable")
    frame = pd.concat([latest, earlier], ignore_index=True) if len(earlier) else latest.copy()
    if frame.empty:
        return frame
    frame = _with_row_keys(frame)
    frame = frame.drop_duplicates(["network", "attack", "defense", "seed", "clean_per_class"], keep="first")
    identity = frame["weights_digest"] if "weights_digest" in frame else pd.Series(np.nan, index=frame.index)
    if "model_key" in frame:  # records written before weights digests: their recipe stands in
        identity = identity.fillna(frame["model_key"])
    frame = frame.assign(_model=identity.fillna(""), _order=range(len(frame)))
    kept = []
    for _, row in frame.groupby(["network", "attack", "seed", "clean_per_class"], sort=False):
        kept.append(row[row["_model"] == row["_model"].iloc[0]])  # groups keep the frame's order
    return pd.concat(kept).sort_values("_order").drop(columns=["_model", "_order"]).reset_index(drop=True)


def _recorded_cells(table, prof, attacks, defenses, seeds, clean_per_class, out):
    """The records of the requested cells, checked against the recipe they should have been made with,
    and a line for each cell that has none."""
    records, missing = [], []
    for seed in range(seeds):
        for attack_name in attacks:
            row = []  # a row's cells must come from one model (one set of weights)
            recipe = as_json(training_settings(prof, attack_name))
            for defense_name in defenses:
                path = record_path(out, prof, attack_name, defense_name, seed, clean_per_class)
                defense, _ = column_defense(table, prof, defense_name, device="cpu", seed=seed)
                settings = as_json(defense.config) if defense else {}
                record = json.loads(path.read_text()) if path.exists() else None
                cell = f"{attack_name} x {defense_name} (seed {seed}, {path.name})"
                if record is None:
                    missing.append(f"{cell}: no record")
                elif any(record["training_config"].get(k) != v for k, v in recipe.items()):
                    missing.append(f"{cell}: made with another recipe")
                elif record.get("defense_config") != settings:
                    missing.append(f"{cell}: made with other settings")
                elif record.get("clean_source", "reserve") != table.clean_source(defense_name):
                    missing.append(f"{cell}: made with clean data from the {record.get('clean_source', 'reserve')}, "
                                   f"not the {table.clean_source(defense_name)}")
                else:
                    row.append(record)
            digests = {r.get("weights_digest") or r.get("model_key") for r in row}
            if len(digests) > 1:
                missing.append(f"{attack_name} (seed {seed}): its records come from {len(digests)} different models")
            else:
                records += row
    return records, missing


def load_records(output_dir) -> pd.DataFrame:
    return pd.DataFrame([json.loads(p.read_text()) for p in sorted(Path(output_dir).glob("records/*.json"))])


def summarize(records: pd.DataFrame, table_id: str) -> pd.DataFrame:
    """One row per (attack, defense): mean and std over seeds, beside the paper's numbers."""
    table = get_table(table_id)
    paper = published(table, table.dataset)
    rows = []
    records = _with_row_keys(records)
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
        if "lambda_max" in group:  # each protocol's (hessian.SHARPNESS_PROTOCOLS), mean over seeds; a record
            # made before the protocols were named measured over the defenses' clean set: its "held-out"
            measured = [s if isinstance(s, dict) else {"held-out": {"lambda_max": lm, "trace": tr}}
                        for s, lm, tr in zip(group["sharpness"] if "sharpness" in group else [None] * len(group),
                                             group["lambda_max"], group["trace"])]
            for protocol in SHARPNESS_PROTOCOLS:
                for metric in ("lambda_max", "trace"):
                    values = [m[protocol][metric] for m in measured if protocol in m]
                    row[f"{metric}_{protocol}"] = float(np.mean(values)) if values else np.nan
        if "sharpness_protocol" in group:
            row["sharpness_protocol"] = group["sharpness_protocol"].iloc[0]
        row["trainable_params"] = int(group["trainable_params"].iloc[0])
        # the papers report 1% clean data: the profile's default amount (50 images per class on CIFAR-10);
        # other amounts (one-shot, ...) have no published cell
        profile = group["profile"].iloc[0] if "profile" in group else None
        papers_amount = resolve_profile(profile, dataset=table.dataset).clean_per_class if profile \
            else PAPER_CLEAN_PER_CLASS
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
    figure is the file ``write_outputs`` saves."""
    import io

    from PIL import Image
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(colors=colors)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def write_outputs(records: pd.DataFrame, table_id: str, profile: str, output_dir=None):
    """Write table.csv, table.md and asr_acc.png; return (summary, figure)."""
    table = get_table(table_id)
    out = output_dir_for(table_id, profile, output_dir)
    summary = summarize(records, table_id)
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
