"""Running a table's grid: :func:`run` takes a checked :class:`~purilib.spec.RunSpec`.

For each grid (network x amount of clean data) it trains (or loads from cache) one model per (attack,
seed), gives each defense the same clean subset and writes one record per cell (``records``) to
``<output_dir>/records/`` as soon as the cell finishes, so an interrupted run loses at most the cell in
progress and a rerun skips finished cells.  ``spec.from_records`` trains nothing: it gathers the records
already there (made on another machine, a GPU one say).  What is written from the records (table.csv,
table.md, figures) is ``reports``'.

A notebook runs its table in two calls::

    spec = RunSpec.from_parameters(TABLE, globals())   # its parameters cell, checked
    records = experiment.run(spec)
"""
import pandas as pd

from . import settings
from .cells import prepare_row, recorded_cells, run_cell, snapshot_every
from .devices import cpu_cores, cpu_threads, resolve_device
from .provenance import code_version
from .records import load_records, merge_records
from .spec import RunSpec

code_version()  # pinned at import: what this process runs (see provenance.code_version)


def run_table(table_id, profile="smoke", **request) -> pd.DataFrame:
    """``run(RunSpec.build(table_id, profile, **request))``: see :meth:`RunSpec.build` for the keywords
    (attacks, defenses, seeds, clean_per_class, model, device, data_root, cache_dir, output_dir, workers,
    executor, ray_address, from_records, progress)."""
    return run(RunSpec.build(table_id, profile, **request))


def run(spec: RunSpec) -> pd.DataFrame:
    """Run (or, ``spec.from_records``, gather) a checked :class:`RunSpec`; return the table's records."""
    table, out = spec.table, spec.output_dir
    if spec.from_records:
        records, missing = [], []
        for network, k in spec.grids:
            found, lacking = recorded_cells(table, spec.recipe(network), spec.attacks, spec.defenses, spec.seeds,
                                            k, out)
            records, missing = records + found, missing + lacking
        if missing:
            raise ValueError(f"{table.id} ({spec.profile.name}) from records: {len(missing)} cells cannot be "
                             "tabulated: " + "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        return pd.DataFrame(records)
    (out / "records").mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    workers = resolve_workers(spec, device)
    with cpu_threads(spec.profile.threads if device == "cpu" else None):  # every worker computes with this count
        if workers != 1 or spec.executor != "local":
            from .executor import run_parallel
            records = run_parallel(spec, device, workers)
        else:
            records = [record for network, k in spec.grids for record in _run_grid(spec, network, k, device)]
    reused = sum(bool(r.pop("reused", False)) for r in records)
    print(f"{table.id} ({spec.profile.name}): {len(records) - reused} cells computed, {reused} reused from "
          f"{out / 'records'} (same weights, code and settings)")
    return merge_records(load_records(out), pd.DataFrame(records))


def _run_grid(spec, network, clean_per_class, device) -> list:
    """The cells of one network and one amount of clean data, here, one after another."""
    prof, records = spec.recipe(network), []
    for seed in range(spec.seeds):
        for attack_name in spec.attacks:
            row = prepare_row(prof, attack_name, seed, clean_per_class, device, spec.data_root, spec.cache_dir,
                              snapshots=snapshot_every(spec.table, prof))
            for defense_name in spec.defenses:
                records.append(run_cell(spec.table, prof, attack_name, defense_name, seed, row, device,
                                        spec.output_dir, spec.progress, cache_dir=spec.cache_dir))
    return records


def resolve_workers(spec, device) -> int:
    """``spec.workers`` as a count: "auto" is one worker per ``profile.threads`` cores on the CPU (at most one
    per model of the table's grids) when the profile fixes the threads, else 1; at most ``PURILIB_WORKERS``."""
    if spec.workers != "auto":
        return spec.workers
    models = len(spec.attacks) * spec.seeds * len(spec.networks)
    workers = 1
    if device == "cpu" and spec.profile.threads:
        workers = max(1, min(cpu_cores() // spec.profile.threads, models))
    return min(workers, settings.auto_workers_cap() or workers)
