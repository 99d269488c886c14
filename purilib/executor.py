"""A table's grid on several workers: local processes (``workers=N``) or a Ray cluster (``executor="ray"``).

A grid is models (one per attack and seed) and cells (one per defense on a model); a table over
networks and amounts of clean data (AWM Table 1) has a grid of each, all run in one pool, and a
network's models serve all its amounts.  Jobs:

- a model job trains its model into the cache (or finds it there);
- a cell job loads that model, runs one defense, writes the cell's record (``cells.run_cell``,
  the sequential path's own code: the records are the same whatever runs them).

A cell is submitted when its model is done.  TrojanNN and CLB need the benign model: their model job
trains it, or waits for the worker already training it (the cache's per-entry lock,
``training.one_writer``), so every model is trained once however many jobs need it.

Local workers are spawned processes.  On a machine with GPUs each worker is pinned to one
(``CUDA_VISIBLE_DEVICES``; workers beyond the GPU count share them round-robin: several cells on one
GPU use it better than one).  On the CPU each worker computes with the parent's thread count, so that
its numbers are the sequential run's (a CPU's float reductions depend on the thread count).  Ray: the same two
jobs as Ray tasks on the cluster at ``ray_address`` / ``$RAY_ADDRESS`` (a local one if neither), each
with a share of a GPU where the cluster has GPUs (``gpus_per_task``).  Every worker must see the data
root and the cache (a shared file system on a cluster): they are passed to it as given here.
"""
import concurrent.futures as futures
import multiprocessing
import os

from . import settings
from .progress import progress as progress_bar


def _train_job(job):
    from .profiles import training_settings
    from .training import train_backdoored_model
    train_backdoored_model(attack=job["attack"], seed=job["seed"], device=job["device"], data_root=job["data_root"],
                           cache_dir=job["cache_dir"], snapshot_every=job["snapshots"],
                           **training_settings(job["prof"], job["attack"]))
    return job["attack"], job["seed"]


_ROW = {}  # a worker keeps the last row it prepared: consecutive cells of one model load it once


def _cell_job(job):
    from pathlib import Path

    from .cells import prepare_row, run_cell
    from .tables import get_table
    prof = job["prof"]
    key = (prof.name, prof.network, prof.dataset) + tuple(job[k] for k in (
        "attack", "seed", "clean_per_class", "device", "data_root", "cache_dir", "snapshots"))  # a Ray worker outlives one run
    if key not in _ROW:
        _ROW.clear()
        _ROW[key] = prepare_row(prof, job["attack"], job["seed"], job["clean_per_class"], job["device"],
                                job["data_root"], job["cache_dir"], snapshots=job["snapshots"])
    return run_cell(get_table(job["table"]), prof, job["attack"], job["defense"], job["seed"], _ROW[key],
                    job["device"], Path(job["out"]), False, cache_dir=job["cache_dir"])


def _pin_worker(gpu_queue, threads):
    """Worker initialiser: one GPU (before CUDA is initialised), the parent's CPU thread count."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    os.environ["PURILIB_PROGRESS"] = "0"
    import torch
    torch.set_num_threads(threads)


def _jobs(spec, device, data_root):
    """The model jobs, one per (network, attack, seed), and each model's cell jobs: every amount of clean
    data of the spec's grids times every defense."""
    from .cells import snapshot_every
    common = dict(device=device, data_root=data_root, cache_dir=str(settings.cache_dir(spec.cache_dir)))
    # the benign model first: TrojanNN and CLB need it
    rows = sorted([(a, s) for s in range(spec.seeds) for a in spec.attacks], key=lambda r: r[0] != "Benign")
    models, cells = {}, {}
    for network, clean_per_class in spec.grids:
        prof = spec.recipe(network)
        for a, s in rows:
            models[(network, a, s)] = {**common, "prof": prof, "model": network, "attack": a, "seed": s,
                                       "snapshots": snapshot_every(spec.table, prof)}
            cells.setdefault((network, a, s), []).extend(
                {**models[(network, a, s)], "clean_per_class": clean_per_class, "defense": d, "table": spec.table.id,
                 "out": str(spec.output_dir)} for d in spec.defenses)
    return models, cells


def _cell_key(job):
    return job["model"], job["clean_per_class"], job["seed"], job["attack"], job["defense"]


def run_parallel(spec, device, workers) -> list:
    """Run the jobs of every grid of ``spec`` (a checked ``RunSpec``; a network's models serve all its
    amounts) on ``workers`` local processes or on Ray, so that the workers stay busy across grids; return
    the cells' records in the sequential order (grid, seed, attack, defense), whatever order they finished in."""
    models, cells = _jobs(spec, device, str(settings.data_root(spec.data_root)))
    run = _run_ray if spec.executor == "ray" else _run_local
    done = run(models, cells, workers, device, spec.ray_address, spec.progress)
    return [done[(network, k, s, a, d)] for network, k in spec.grids for s in range(spec.seeds) for a in spec.attacks
            for d in spec.defenses]


def _bar(total, enabled):
    """One overall bar: cells done / total, with its ETA, and how many jobs are queued or running."""
    return progress_bar(total=total, desc="cells", enabled=enabled)


def _run_local(models, cells, workers, device, ray_address, progress):
    gpus = 0
    if device.startswith("cuda"):
        import torch
        gpus = torch.cuda.device_count()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = None
    if gpus:
        queue = context.Manager().Queue()
        for i in range(workers):
            queue.put(i % gpus)
    import torch
    # every worker computes with this process's thread count: a CPU's float reductions depend on it, and
    # the records must not depend on how many workers made them (ANP's pruning threshold flips a smoke
    # cell between 1 and 2 threads); with fewer cores than workers x threads, workers wait for cores
    threads = torch.get_num_threads()
    worker_device = "cuda" if gpus else device  # each worker sees its one GPU as cuda:0
    total = sum(len(c) for c in cells.values())
    bar, done = _bar(total, progress), {}
    with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_pin_worker,
                                     initargs=(queue, threads)) as pool:
        pending = {pool.submit(_train_job, {**job, "device": worker_device}): ("model", key)
                   for key, job in models.items()}
        while pending:
            finished, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for future in finished:
                kind, key = pending.pop(future)
                result = future.result()  # a failed job stops the run; finished cells are on disk
                if kind == "model":
                    for job in cells[key]:
                        pending[pool.submit(_cell_job, {**job, "device": worker_device})] = ("cell", job)
                else:
                    done[_cell_key(key)] = result
                    _advance(bar, done, total, len(pending))
    return done


def _advance(bar, done, total, running):
    bar.update(1)
    bar.set_postfix_str(f"{running} jobs queued or running", refresh=False)
    if len(done) == total:
        bar.close()


def _run_ray(models, cells, workers, device, ray_address, progress):
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'purilib[ray]'") from None
    env = {k: v for k, v in os.environ.items() if k.startswith("PURILIB_")}
    ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
             runtime_env={"env_vars": {**env, "PURILIB_PROGRESS": "0"}}, log_to_driver=False)
    gpu = 0.0
    if device.startswith("cuda"):
        gpu = 1.0 / max(1, workers)  # ``workers`` tasks share one GPU
    train = ray.remote(num_gpus=gpu, num_cpus=1)(_train_job)
    cell = ray.remote(num_gpus=gpu, num_cpus=1)(_after_model)
    model_refs = {key: train.remote({**job, "device": "cuda" if gpu else device}) for key, job in models.items()}
    refs = {cell.remote(model_refs[key], {**job, "device": "cuda" if gpu else device}): job
            for key, jobs in cells.items() for job in jobs}
    total = len(refs)
    bar, done = _bar(total, progress), {}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        job = refs.pop(ready[0])
        done[_cell_key(job)] = ray.get(ready[0])
        _advance(bar, done, total, len(refs))
    return done


def _after_model(_model_done, job):
    """A cell as a Ray task: Ray starts it once its model task (the first argument) has finished."""
    return _cell_job(job)
