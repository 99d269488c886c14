"""The GPU campaign: a committed queue of full-width work and a runner that resumes it.

A GPU is lent rarely, 15 minutes at a time (10 per command), on a fresh machine each time: only the files
a command brings back survive.  So the work is a queue (``benchmarks/campaign.toml``), in priority order,
of **units** one command can finish: one row of a table, or one entry of a figure.  A unit's jobs, each
its own process on the shared GPU: one trains its model (none where another unit of the command uses the
same model: the same row of another table), then its columns, split into **groups**, each start once the
model is in the cache.  No process waits on another's lock: while models train, the others train models.

``python -m purilib.campaign run --out DIR [--budget S] [--processes N]``:

1. skips every unit whose records are already in the results folder (committed, made with the
   unit's training recipe, defense settings and clean data: ``run_table(from_records=True)``);
2. admits, in queue order, each other unit that, by the queue's estimates, ends within the budget with
   everything admitted before it (:class:`Schedule`: the rule played forward, again whenever a job ends;
   a unit whose models the cache holds already, from an earlier command on this machine, has no model job);
   starts the admitted jobs, at most N processes at once; kills what still runs at the budget;
3. after each job, packs every record made so far (and the models' manifests) into
   ``DIR/records.tar.gz``, so a command killed at its limit still brings back every finished cell;
4. prints, and writes to ``DIR/campaign.json``, which units it finished, which it left and why.

``python -m purilib.campaign unpack DIR/records.tar.gz``, back here: the records into ``results/``, each
touched table rendered from its records (``./reproduce.sh TABLE --from-records``, papermill), the results
index refreshed.  ``python -m purilib.campaign list``: the queue, each unit done or not, the estimate of
what is left; ``plan [--select t1-gpu-] [--processes N] [--budget 540,210]``: what the runner would do with
the units left if every job took its estimate (the same :class:`Schedule`; a session's commands on one machine
share its cache, ``cached_models``); ``estimates DIR/campaign.json``: each job of a run,
its seconds beside its estimate (to correct the queue's).  ``--profile smoke --device cpu`` runs the same
logic on this machine (the rehearsal the tests run).  ``run --compile-from PROBE``: the loops a probe on the
same machine measured faster and equal (``accepted_compiles``) run compiled, their columns estimated faster.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import signal
import tarfile
import tempfile
import threading
import time
import tomllib
from pathlib import Path

from . import settings
from .records import migrate, read_record, weights

QUEUE = Path(__file__).resolve().parents[1] / "benchmarks" / "campaign.toml"


@dataclasses.dataclass(frozen=True)
class Unit:
    id: str
    table: str
    profile: str
    attacks: tuple
    groups: tuple          # tuples of columns, one process each
    model_s: float = 0.0   # by the estimates: seconds to train the row's model(s) beside the runner's others
    group_s: tuple = ()    # seconds of each group (its process's start and its cells)
    models: tuple = ()     # the models the unit's cells use: (attack, seed, training settings, snapshots) as JSON
    model: str = None      # the network (None: the table's / profile's)
    clean_per_class: int = None
    why: str = ""

    @property
    def defenses(self):
        return tuple(d for group in self.groups for d in group)

    @property
    def estimate_s(self):
        """Process-seconds, by the estimates: its model and its groups."""
        return self.model_s + sum(self.group_s)


MODEL = -1  # a job's group index that means: train the unit's models


def load_queue(path=None, profile=None, speedups=None) -> list:
    """The queue's units, checked against the table registry, with their estimates (``profile``: every unit
    on that profile instead, e.g. smoke for the CPU rehearsal; ``speedups``: {defense: x}, the columns that
    run that defense estimated x times faster: its loop compiled, ``accepted_compiles``)."""
    from .tables import get_table
    path = Path(path or QUEUE)
    with open(path, "rb") as f:
        data = tomllib.load(f)
    units, seen = [], set()
    for entry in data.get("unit", []):
        entry = dict(entry)
        where = f"{path.name}: unit {entry.get('id', '?')!r}"
        allowed = {f.name for f in dataclasses.fields(Unit)} - {"group_s", "models"} | {"seconds"}
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if entry.get("id") in seen:
            raise ValueError(f"{where}: the id is used twice")
        seen.add(entry["id"])
        lacking = [k for k in ("id", "table", "profile", "attacks") if k not in entry]
        if lacking:
            raise ValueError(f"{where}: lacks {', '.join(lacking)}")
        table = get_table(entry["table"])
        groups = tuple(tuple(g) for g in entry.get("groups", [table.defenses]))
        for name in entry["attacks"]:
            if name not in table.attacks:
                raise ValueError(f"{where}: {table.id} has no row {name!r}")
        for name in (d for g in groups for d in g):
            if name not in table.defenses:
                raise ValueError(f"{where}: {table.id} has no column {name!r}")
        seconds = {**data.get("seconds", {}), **entry.pop("seconds", {})}
        unpriced = sorted({d for g in groups for d in g} - set(seconds))
        if unpriced:
            raise ValueError(f"{where}: no estimate (seconds) for {', '.join(unpriced)}")
        model_s = data.get("model_s", {})
        if "model_s" not in entry and entry["profile"] not in model_s:
            raise ValueError(f"{where}: no estimate (model_s) for a {entry['profile']} model")
        model_s = entry.get("model_s", model_s.get(entry["profile"]))
        seconds = {d: t / (speedups or {}).get(table.method(d)[0], 1.0) for d, t in seconds.items()}
        if profile:  # another profile than the queue's: the rehearsal's estimates
            rehearsal = data.get("rehearsal", {})
            model_s = entry.get("model_s", rehearsal.get("model_s", 0))
            seconds = {d: rehearsal.get("cell_s", 0) for d in seconds}
        unit = Unit(**{**entry, "attacks": tuple(entry["attacks"]), "groups": groups, "model_s": model_s,
                       "profile": profile or entry["profile"],
                       "group_s": tuple(data.get("start_s", 0) + sum(seconds[d] for d in g) for g in groups)})
        units.append(dataclasses.replace(unit, models=models_of(unit)))
    return units


def _spec(unit, **request):
    """The unit's rows and networks as a checked run (its clean data aside: the models do not depend on it)."""
    from .spec import RunSpec
    return RunSpec.build(unit.table, unit.profile, log=lambda *_: None,
                         **{**_run_kwargs(unit, unit.defenses), "clean_per_class": None}, **request)


def models_of(unit) -> tuple:
    """The models ``unit``'s cells use, each as the JSON of what the training cache keys it by (short of the
    data): two units of one command with the same entry share one model, trained once."""
    from .cells import snapshot_every
    from .profiles import training_settings
    spec = _spec(unit)
    return tuple(json.dumps([attack, seed, training_settings(spec.recipe(network), attack),
                             snapshot_every(spec.table, spec.recipe(network))], sort_keys=True, default=str)
                 for network in spec.networks for seed in range(spec.seeds) for attack in spec.attacks)


def cached_models(units, cache_dir=None) -> set:
    """The models of ``units`` (``Unit.models``) that the cache holds trained: on a GPU, those an earlier command
    of the session trained on this machine (``gpu_session.sh``'s STATE).  Matched by recipe (attack, seed,
    training settings, snapshots, training format) against the cache's manifests, not by the data's checksum:
    in a cache that also holds models of other data, a unit may find its model missing after all, and its
    groups train it (the same records, later than the schedule planned)."""
    from .training import TRAINING_FORMAT, training_config
    kept = []
    for path in Path(settings.cache_dir(cache_dir)).glob("models/*/manifest.json"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # one being written: not trained yet
        if manifest.get("config", {}).get("format") == TRAINING_FORMAT:
            kept.append((manifest["config"], manifest.get("snapshot_every")))
    found = set()
    for model in {m for unit in units for m in unit.models}:
        attack, seed, training, snapshots = json.loads(model)
        wanted = json.loads(json.dumps(training_config(**training, attack=attack, seed=seed), default=str))
        if any(all(config.get(k) == v for k, v in wanted.items()) and snapshots in (None, every)
               for config, every in kept):
            found.add(model)
    return found


def _folder(model):
    return json.dumps(json.loads(model)[:3], sort_keys=True)  # the cache folder: snapshots or not, one model


def job_seconds(job):
    unit, group = job
    return unit.model_s if group == MODEL else unit.group_s[group]


def to_start(jobs, free, ready) -> list:
    """The runner's rule for what to start: in queue order, up to ``free`` of the admitted ``jobs`` ((unit,
    group) pairs), a unit's groups only once every model it uses is trained (in ``ready``)."""
    chosen = []
    for unit, group in jobs:
        if len(chosen) >= free:
            break
        if group == MODEL or set(unit.models) <= ready:
            chosen.append((unit, group))
    return chosen


def ends(jobs, processes, now=0.0, running=(), ready=()) -> dict:
    """By the estimates, when each unit's last job ends, ``to_start`` played forward from ``now``: ``jobs``
    admitted and not yet started, ``running`` ((expected end, job) pairs), ``ready`` the models trained.
    A unit whose groups can never start (no job trains their model) ends at infinity."""
    pending, running, ready, last = list(jobs), sorted(running, key=lambda r: r[0]), set(ready), {}
    while pending or running:
        for job in to_start(pending, processes - len(running), ready):
            pending.remove(job)
            running.append((now + job_seconds(job), job))
        if not running:
            break
        running.sort(key=lambda r: r[0])
        now, (unit, group) = running.pop(0)
        if group == MODEL:
            ready |= set(unit.models)
        last[unit.id] = max(last.get(unit.id, now), now)
    last.update({unit.id: float("inf") for unit, _ in pending})
    return last


class Schedule:
    """Which units a command runs and when their jobs start, by the estimates: the runner drives it with the
    clock and its processes, :func:`plan_commands` with the estimates alone (so the plan is the runner's rule).

    A unit is admitted only if, with it, every admitted unit still ends within the budget; its jobs are its
    model's (unless an admitted unit trains the same models) and its groups'.  Re-admitting as jobs end lets a
    unit in when the others turn out faster than their estimates."""

    def __init__(self, units, budget, processes, trained=()):
        self.units, self.budget, self.processes = list(units), budget, processes
        self.order = {unit.id: i for i, unit in enumerate(self.units)}
        self.admitted, self.waiting = [], []  # units admitted; their jobs not yet started, in queue order
        # models a job of this command trains, or ``trained`` (in the cache already: no job); those trained
        self.training, self.ready = set(trained), set(trained)

    def admit(self, now, running=()) -> list:
        """Admit, in queue order, each unit that fits; ``running``: (started at, job) pairs.  Returns the units
        that do not fit now."""
        under_way = [(max(began + job_seconds(job), now + 1.0), job) for began, job in running]
        unfit = []
        for unit in self.units:
            if unit in self.admitted:
                continue
            folders = {_folder(m): m for m in self.training}
            if any(folders.get(_folder(m), m) != m for m in unit.models):
                unfit.append(unit)  # the same model with snapshots and without: not in one command
                continue
            jobs = [(unit, MODEL)] if not set(unit.models) <= self.training else []
            jobs += [(unit, group) for group in range(len(unit.groups))]
            waiting = sorted(self.waiting + jobs, key=lambda job: (self.order[job[0].id], job[1]))
            if max(ends(waiting, self.processes, now, under_way, self.ready).values()) <= self.budget:
                self.admitted.append(unit)
                self.waiting = waiting
                self.training |= set(unit.models)
            else:
                unfit.append(unit)
        return unfit

    def start(self, free) -> list:
        chosen = to_start(self.waiting, free, self.ready)
        for job in chosen:
            self.waiting.remove(job)
        return chosen

    def trained(self, unit, ok):
        """``unit``'s model job ended: its models are ready, or (``ok`` false) the units that need them are dropped."""
        if ok:
            self.ready |= set(unit.models)
            return []
        dropped = [u for u in self.admitted if set(u.models) & set(unit.models)]
        self.waiting = [job for job in self.waiting if job[0] not in dropped]
        return dropped


def plan_commands(units, budget=540.0, processes=8) -> tuple:
    """What the runner would do with ``units`` if every job took its estimate: the units each command would
    finish, in order, and the units no command finishes (over the budget alone).  ``budget``: the seconds of a
    command, or of each command of one session on one machine (e.g. ``(540, 210)``), whose later commands find
    the models the earlier ones trained in its cache (``cached_models``); the session repeats on a fresh machine,
    and a command that fits nothing is listed empty."""
    budgets = (budget,) if isinstance(budget, (int, float)) else tuple(budget)
    commands, pending, trained = [], list(units), set()
    while pending:
        first = len(commands) % len(budgets) == 0
        if first:
            trained = set()  # a fresh machine: an empty cache
        schedule, running, now = Schedule(pending, budgets[len(commands) % len(budgets)], processes, trained), [], 0.0
        schedule.admit(now)
        while True:
            running += [(now + job_seconds(job), job) for job in schedule.start(processes - len(running))]
            if not running:
                break
            running.sort(key=lambda r: r[0])
            now, (unit, group) = running.pop(0)
            if group == MODEL:
                schedule.trained(unit, True)
            schedule.admit(now, [(end - job_seconds(job), job) for end, job in running])
        done = [u.id for u in schedule.admitted]
        if not done and first:
            break  # a fresh machine's whole command fits none of them: no session will
        commands.append(done)
        trained |= schedule.ready
        pending = [u for u in pending if u.id not in done]
    while commands and not commands[-1]:
        commands.pop()
    return commands, [u.id for u in pending]


def against_estimates(summary, units) -> list:
    """Each job a run's ``campaign.json`` records, its wall seconds beside the queue's estimate (what to put
    in campaign.toml once a GPU has run it): one dict per job."""
    by_id, rows = {u.id: u for u in units}, []
    for unit_id, jobs in summary["groups"].items():
        unit = by_id.get(unit_id)
        for group, code, seconds in jobs if unit else ():
            model = group == "model"
            rows.append({"unit": unit_id, "job": "model" if model else f"group {group + 1}",
                         "columns": "" if model else ", ".join(unit.groups[group]),
                         "estimate_s": unit.model_s if model else unit.group_s[group], "seconds": seconds, "exit": code})
    return rows


def _run_kwargs(unit, defenses):
    return dict(attacks=list(unit.attacks), defenses=list(defenses), model=unit.model,
                clean_per_class=unit.clean_per_class)


def accepted_compiles(lines, min_ratio=1.2, tolerance=0.01) -> dict:
    """{defense: speed-up} from a probe's ``benchmarks/gpu_speed.py`` lines (``--variants current,compiled``,
    on the machine about to run the campaign): each loop whose compiled run was at least ``min_ratio`` times
    faster than the current one and purified to the same model (its logits within ``tolerance`` of how far
    purification moved them; a CUDA graph replays the same kernels)."""
    accepted = {}
    for line in lines:
        if "compiled_ratio" not in line or line["compiled_ratio"] < min_ratio:
            continue
        if line["compiled_logit_diff"] <= tolerance * line["logit_change"]:
            accepted[line["defense"]] = line["compiled_ratio"]
    return accepted


def is_done(unit, results=None) -> bool:
    """Every cell of ``unit`` has a record in the results folder made with its recipe, settings and clean data."""
    from .experiment import run_table
    from .spec import output_dir_for
    out = output_dir_for(unit.table, unit.profile, None if results is None else Path(results) / unit.table / unit.profile)
    try:
        run_table(unit.table, unit.profile, from_records=True, output_dir=out, **_run_kwargs(unit, unit.defenses))
    except (ValueError, KeyError):  # KeyError: a record too old to say how it was made
        return False
    return True


def run_group(unit, group, out, device="auto", data_root=None, cache_dir=None):
    """One group of a unit's columns, or (``group == MODEL``) its models trained into the cache, here (the job a
    runner's process runs)."""
    from .experiment import run_table
    if group == MODEL:
        from .cells import snapshot_every, train_row_model
        from .devices import cpu_threads, resolve_device
        spec, device = _spec(unit, data_root=data_root, cache_dir=cache_dir), resolve_device(device)
        with cpu_threads(spec.profile.threads if device == "cpu" else None):  # as run_table's cells
            for network in spec.networks:
                prof = spec.recipe(network)
                for seed in range(spec.seeds):
                    for attack in spec.attacks:
                        train_row_model(prof, attack, seed, device, data_root, cache_dir, snapshot_every(spec.table, prof))
        return
    run_table(unit.table, unit.profile, device=device, data_root=data_root, cache_dir=cache_dir,
              output_dir=Path(out) / unit.table / unit.profile, progress=False, workers=1,
              **_run_kwargs(unit, unit.groups[group]))


def pack(work: Path, cache_dir, target: Path):
    """Every record under ``work`` and every model manifest of the cache into ``target`` (a .tar.gz),
    written atomically."""
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(work.glob("*/*/records/*.json")):
            tar.add(path, arcname=str(path.relative_to(work)))
        for path in sorted(Path(settings.cache_dir(cache_dir)).glob("models/*/manifest.json")):
            tar.add(path, arcname=f"manifests/{path.parent.name}.json")
    partial.replace(target)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


FAIL_FAST = 3  # groups in a row that fail within a minute of starting: the runner starts no more


def why_not_here(unit) -> str:
    """Why this machine cannot run ``unit`` ("" where it can): its measurements import a package this machine
    lacks (a GPU machine has no registry), or it asks for more clean images per class than its profile reserves
    (AWM Table 1's 50 and 100 on the smoke rehearsal, which reserves 10)."""
    import importlib.util
    from .spec import RunSpec
    from .tables import get_table
    needs = ["sklearn"] if "features" in get_table(unit.table).measures else []  # the t-SNE of the figures
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        return f"needs {', '.join(missing)}, missing here"
    try:  # the request as its groups will make it, refused (or not) where every request is
        RunSpec.build(unit.table, unit.profile, log=lambda *_: None, **_run_kwargs(unit, unit.defenses))
    except ValueError as error:
        return str(error)
    return ""


def run(units, out, budget=540.0, processes=8, device="auto", data_root=None, cache_dir=None, results=None,
        log=print) -> dict:
    """Run the queue's units not yet done, as many as fit in ``budget`` seconds; return the summary."""
    start = time.time()
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="purilib-campaign-"))  # not under ``out``: only its few files come back
    out.mkdir(parents=True, exist_ok=True)
    done_before = [u.id for u in units if is_done(u, results)]
    unable = {u.id: why for u in units if u.id not in done_before and (why := why_not_here(u))}
    pending = [u for u in units if u.id not in done_before and u.id not in unable]
    for unit_id, why in unable.items():
        log(f"[0 s] {unit_id} left: {why}")
    log(f"[{time.time() - start:.0f} s] {len(done_before)} units already recorded, {len(pending)} to do; budget "
        f"{budget:.0f} s, {processes} processes")
    cached = cached_models(pending, cache_dir)
    if cached:
        log(f"[{time.time() - start:.0f} s] {len(cached)} of their models are in the cache already (an earlier command "
            "on this machine): the units on them train nothing")
    schedule, running, results_of = Schedule(pending, budget, processes, cached), {}, {u.id: [] for u in pending}
    env = {**os.environ, "PURILIB_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}
    if cache_dir:
        env["PURILIB_CACHE_DIR"] = str(cache_dir)
    queue_file = work / "queue.json"
    queue_file.write_text(json.dumps([dataclasses.asdict(u) for u in pending]))
    (work / "logs").mkdir()

    def name(unit, group):
        return "its model" if group == MODEL else f"group {group + 1}/{len(unit.groups)}"

    def tag(group):  # in campaign.json and the logs' names
        return "model" if group == MODEL else group

    # stopped from outside (SIGTERM, Ctrl-C): the jobs running are stopped, what they finished is packed
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        told, failures, changed = set(), 0, True  # units said not to fit; jobs in a row that failed at once
        while True:
            now = time.time() - start
            accepting = now < budget and failures < FAIL_FAST
            if accepting and changed:  # admit what now fits, by the estimates
                unfit = [u.id for u in schedule.admit(now, [(began, job) for job, began, _ in running.values()])
                         if u.id not in told]
                if unfit:
                    told.update(unfit)
                    log(f"[{now:.0f} s] by the estimates, {len(unfit)} units do not fit beside the rest in the "
                        f"{budget - now:.0f} s left: {', '.join(unfit[:6])}{' ...' if len(unfit) > 6 else ''}")
                changed = False
            for unit, group in schedule.start(processes - len(running) if accepting else 0):
                command = [sys.executable, "-m", "purilib.campaign", "group", str(queue_file), unit.id, str(group),
                           "--out", str(work), "--device", device] + (["--data-root", str(data_root)] if data_root else [])
                logfile = open(work / "logs" / f"{unit.id}.{tag(group)}.log", "w")
                process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env)
                running[process] = ((unit, group), now, logfile)
                log(f"[{now:.0f} s] started {unit.id} {name(unit, group)}"
                    + ("" if group == MODEL else f": {', '.join(unit.groups[group])}"))
            if not running:
                break  # nothing admitted is left, or nothing more fits
            time.sleep(0.5)
            now = time.time() - start
            for process, ((unit, group), began, logfile) in list(running.items()):
                code = process.poll()
                if code is None and now < budget:
                    continue
                if code is None:  # the budget is spent: stop it; its finished cells are recorded already
                    process.kill()
                    code = process.wait()
                    code = "killed at the budget"
                logfile.close()
                del running[process]
                changed = True
                results_of[unit.id].append((tag(group), code, round(now - began, 1)))
                log(f"[{now:.0f} s] {unit.id} {name(unit, group)}: exit {code} after {now - began:.0f} s")
                if code not in (0, "killed at the budget"):
                    tail = (work / "logs" / f"{unit.id}.{tag(group)}.log").read_text(errors="replace").strip()
                    log("    " + "\n    ".join(tail.splitlines()[-3:]))
                if group == MODEL:
                    for other in schedule.trained(unit, code == 0):
                        log(f"[{now:.0f} s] {other.id}: its model was not trained; its groups will not start")
                # a broken install fails every job within seconds: stop before it empties the queue
                failures = failures + 1 if code not in (0, "killed at the budget") and now - began < 60 else 0
                if failures == FAIL_FAST:
                    log(f"[{now:.0f} s] {FAIL_FAST} jobs in a row failed within a minute: starting no more")
                pack(work, cache_dir, out / "records.tar.gz")
    except KeyboardInterrupt:
        log(f"[{time.time() - start:.0f} s] interrupted: stopping {len(running)} jobs")
        for process, ((unit, group), began, logfile) in running.items():
            process.kill()
            process.wait()
            logfile.close()
            results_of[unit.id].append((tag(group), "interrupted", round(time.time() - start - began, 1)))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    finished = [u.id for u in pending if sum(g != "model" for g, _, _ in results_of[u.id]) == len(u.groups)
                and all(code == 0 for _, code, _ in results_of[u.id])]
    partial = [u.id for u in pending if results_of[u.id] and u.id not in finished]
    left = [u.id for u in pending if not results_of[u.id]] + list(unable)
    seconds = round(time.time() - start, 1)
    cells = len(list(work.glob("*/*/records/*.json")))
    summary = {"seconds": seconds, "budget": budget, "processes": processes, "already_recorded": done_before,
               "finished": finished, "partial": partial, "left": left, "not_here": unable, "cells": cells,
               "cells_per_minute": round(cells / max(seconds, 1e-9) * 60, 2),
               "groups": {k: v for k, v in results_of.items() if v}}
    pack(work, cache_dir, out / "records.tar.gz")
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(work / "logs", arcname="logs")
    (out / "campaign.json").write_text(json.dumps(summary, indent=1))
    log(f"[{seconds:.0f} s] finished {len(finished)} units ({', '.join(finished) or 'none'}); partial "
        f"{', '.join(partial) or 'none'}; left {len(left)} ({', '.join(left[:8])}{' ...' if len(left) > 8 else ''}); "
        f"{cells} cells, {summary['cells_per_minute']} per minute")
    return summary


def unpack(archive, results=None, render=True, papermill=True, log=print) -> list:
    """The archive's records into the results folder (nothing outside it: a member with another path is
    refused), the manifests beside them in ``benchmarks/gpu/manifests/``; each touched (table, profile)
    rendered from its records; returns the touched pairs."""
    from .tables import TABLES
    results = Path(results) if results else settings.results_dir()
    touched, incoming = [], {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if ".." in parts or Path(member.name).is_absolute() or not (member.isfile() or member.isdir()):
                raise ValueError(f"{archive}: refusing member {member.name!r}")
            if member.isdir():
                continue
            if parts[0] == "manifests" and len(parts) == 2:
                target = results / "benchmarks" / "gpu" / "manifests" / parts[1]
                data = tar.extractfile(member).read()
            elif len(parts) == 4 and parts[0] in TABLES and parts[2] == "records" and parts[3].endswith(".json"):
                target = results / Path(*parts)
                data = tar.extractfile(member).read()
                incoming[target] = migrate(json.loads(data))
                if (parts[0], parts[1]) not in touched:
                    touched.append((parts[0], parts[1]))
            else:
                raise ValueError(f"{archive}: unexpected member {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    moved = _set_aside_other_models(incoming)
    log(f"unpacked {archive}: {', '.join(f'{t}/{p}' for t, p in touched) or 'no records'}"
        + (f"; {moved} records of the same rows made from other weights moved to records/superseded/" if moved else ""))
    if render:
        for table, profile in touched:
            render_from_records(table, profile, results, papermill=papermill, log=log)
        from .index import write_index
        write_index(results)
    return touched


def _row_of(record):
    """A (migrated) record's row: network, attack, seed, clean images per class."""
    return record["network"], record["attack"], record["seed"], record["clean_per_class"]


def _set_aside_other_models(incoming: dict) -> int:
    """A row is one model: where the records just unpacked come from other weights than a row's records
    already there (a model trained again on a fresh machine), the earlier ones that were not replaced move
    to ``records/superseded/`` (git keeps their history), so that no table mixes two models in a row."""
    moved = 0
    folders = {path.parent for path in incoming}
    for folder in folders:
        new = {_row_of(r): weights(r) for p, r in incoming.items() if p.parent == folder}
        for path in sorted(folder.glob("*.json")):
            if path in incoming:
                continue
            record = read_record(path)
            row = _row_of(record)
            if row in new and weights(record) != new[row]:
                (folder / "superseded").mkdir(exist_ok=True)
                path.replace(folder / "superseded" / path.name)
                moved += 1
    return moved


def renderable(table_id, profile, results=None) -> dict:
    """What the table's records can render, the largest complete grid: its networks, rows (those recorded on
    every one of the networks), the table's columns recorded with the current settings for all of them, and
    the amount of clean data where a table over amounts has a single one recorded (else None: every amount).
    Of the grid over every recorded network and that of the table's own network(s) alone, the one with
    more cells (on a tie the table's own: a new network's first rows do not un-render the others)."""
    from .experiment import run_table
    from .spec import RunSpec, output_dir_for
    spec = RunSpec.build(table_id, profile, from_records=True, log=lambda *_: None,
                         output_dir=output_dir_for(table_id, profile, None if results is None
                                                   else Path(results) / table_id / profile))
    table, out = spec.table, spec.output_dir
    found = [read_record(p) for p in sorted((out / "records").glob("*.json"))]
    default = sorted(table.models) or [spec.profile.network]
    amounts = sorted({r.get("clean_per_class") for r in found if r.get("clean_per_class")})
    clean = amounts[0] if table.clean_amounts and len(amounts) == 1 else None

    def plan(networks):
        rows = [a for a in table.attacks if all((n, a) in {(_row_of(r)[0], r["attack"]) for r in found}
                                                for n in networks)]
        model = None if networks == default else networks
        columns = []
        for column in table.defenses if rows else ():
            try:
                run_table(table_id, profile, attacks=rows, defenses=[column], from_records=True, output_dir=out,
                          model=model, clean_per_class=clean)
                columns.append(column)
            except ValueError:
                pass
        return {"rows": rows, "columns": columns, "model": model, "clean_per_class": clean,
                "cells": len(rows) * len(columns) * len(networks)}
    recorded = sorted({_row_of(r)[0] for r in found})
    own = plan(default)
    if recorded and recorded != default:
        every = plan(recorded)
        return every if every["cells"] > own["cells"] else own
    return own


def render_from_records(table_id, profile, results=None, papermill=True, log=print):
    """The table's notebook executed from its records (papermill, through ``purilib run``), or, where papermill
    is missing (or ``papermill=False``), its table.csv / table.md / figure written directly."""
    from .experiment import run
    from .reports import write
    from .spec import RunSpec, output_dir_for
    plan = renderable(table_id, profile, results)
    rows, columns, model = plan["rows"], plan["columns"], plan["model"]
    if not rows or not columns:
        log(f"{table_id}/{profile}: nothing complete to render")
        return
    out = output_dir_for(table_id, profile, None if results is None else Path(results) / table_id / profile)
    try:
        import papermill as _  # noqa: F401
    except ImportError:
        papermill = False
    if papermill:
        env = {**os.environ, "PURILIB_RESULTS_DIR": str(Path(results or settings.results_dir()).resolve())}
        command = [sys.executable, "-m", "purilib", "run", table_id, "--profile", profile, "--attacks", ",".join(rows),
                   "--defenses", ",".join(columns), "--from-records"]
        command += ["--model", ",".join(model)] if model else []
        command += ["--clean-per-class", str(plan["clean_per_class"])] if plan["clean_per_class"] else []
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    else:
        spec = RunSpec.build(table_id, profile, attacks=rows, defenses=columns, from_records=True, output_dir=out,
                             model=model, clean_per_class=plan["clean_per_class"], log=lambda *_: None)
        write(run(spec), spec)
    log(f"{table_id}/{profile}: rendered {len(rows)} rows x {len(columns)} columns"
        f"{' on ' + ', '.join(model) if model else ''} from records")


def _main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m purilib.campaign", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the queue, each unit done or not")
    go = sub.add_parser("run", help="run what is not yet recorded, within the budget")
    for p in (listing, go):
        p.add_argument("--queue", default=None)
        p.add_argument("--profile", default=None, help="every unit on this profile (smoke: the CPU rehearsal)")
        p.add_argument("--results", default=None)
        p.add_argument("--select", default="", help="only the units whose id starts so (e.g. t1-gpu-)")
    go.add_argument("--out", required=True)
    go.add_argument("--budget", type=float, default=540.0)
    go.add_argument("--processes", type=int, default=8)
    go.add_argument("--device", default="auto")
    go.add_argument("--data-root", default=None)
    go.add_argument("--cache-dir", default=None)
    go.add_argument("--compile-from", default=None,
                    help="a probe's gpu_speed.py lines: the loops it measured faster and equal run compiled")
    group = sub.add_parser("group", help=argparse.SUPPRESS)
    group.add_argument("queue_json")
    group.add_argument("unit")
    group.add_argument("group", type=int)
    group.add_argument("--out", required=True)
    group.add_argument("--device", default="auto")
    group.add_argument("--data-root", default=None)
    planning = sub.add_parser("plan", help="by the estimates, the commands the units left need")
    planning.add_argument("--queue", default=None)
    planning.add_argument("--results", default=None)
    planning.add_argument("--select", default="", help="only the units whose id starts so (e.g. t1-gpu-)")
    planning.add_argument("--budget", default="540", help="seconds of a command, or of each command of one session "
                          "on one machine, comma-separated (540,210: the later finds the models the earlier trained)")
    planning.add_argument("--processes", type=int, default=8)
    measured = sub.add_parser("estimates", help="a run's jobs (its campaign.json): seconds beside the estimates")
    measured.add_argument("summary")
    measured.add_argument("--queue", default=None)
    measured.add_argument("--profile", default=None, help="the profile the run was given (smoke: a rehearsal)")
    back = sub.add_parser("unpack", help="bring a run's records.tar.gz into results/ and render what it touched")
    back.add_argument("archive")
    back.add_argument("--results", default=None)
    back.add_argument("--no-render", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "group":
        units = {u["id"]: u for u in json.loads(Path(args.queue_json).read_text())}
        entry = units[args.unit]
        unit = Unit(**{**entry, "attacks": tuple(entry["attacks"]), "groups": tuple(map(tuple, entry["groups"])),
                       "group_s": tuple(entry["group_s"]), "models": tuple(entry["models"])})
        run_group(unit, args.group, args.out, device=args.device, data_root=args.data_root)
        return 0
    if args.command == "unpack":
        unpack(args.archive, args.results, render=not args.no_render)
        return 0
    if args.command == "estimates":
        rows = against_estimates(json.loads(Path(args.summary).read_text()), load_queue(args.queue, args.profile))
        print("| unit | job | columns | estimate (s) | measured (s) | exit |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['unit']} | {r['job']} | {r['columns']} | {r['estimate_s']:.0f} | {r['seconds']} | {r['exit']} |")
        done = [r for r in rows if r["exit"] == 0]
        if done:
            print(f"{len(done)} jobs ended: {sum(r['seconds'] for r in done):.0f} s measured against "
                  f"{sum(r['estimate_s'] for r in done):.0f} s estimated")
        return 0
    if args.command == "plan":
        try:
            budgets = tuple(float(b) for b in args.budget.split(","))
        except ValueError:
            raise SystemExit(f"--budget: seconds, comma-separated (e.g. 540,210), not {args.budget!r}") from None
        units = [u for u in load_queue(args.queue) if u.id.startswith(args.select) and not is_done(u, args.results)]
        commands, never = plan_commands(units, budgets, args.processes)
        by_id = {u.id: u for u in units}
        for i, ids in enumerate(commands):
            if i % len(budgets) == 0:
                trained = set()  # a fresh machine; a unit whose models another trained (before, or in this command) trains none
            models = 0
            for unit_id in ids:
                models += not trained.issuperset(by_id[unit_id].models)
                trained |= set(by_id[unit_id].models)
            machine = f"machine {i // len(budgets) + 1}, {budgets[i % len(budgets)]:.0f} s, " if len(budgets) > 1 else ""
            print(f"command {i + 1} ({machine}{models} model jobs): {', '.join(ids) or 'nothing fits'}")
        sizes = " + ".join(f"{b:.0f}" for b in budgets)
        print(f"{len(units)} units left{f' starting {args.select!r}' if args.select else ''}: {len(commands)} "
              f"commands of {sizes} s{' per machine' if len(budgets) > 1 else ''} at {args.processes} processes, "
              "by the estimates" + (f"; never finished (over the budget): {', '.join(never)}" if never else ""))
        return 0
    speedups = {}
    if getattr(args, "compile_from", None):
        probe = Path(args.compile_from)
        lines = [json.loads(t) for t in probe.read_text().splitlines() if t.strip()] if probe.exists() else []
        speedups = accepted_compiles(lines)
        os.environ["PURILIB_COMPILE"] = ",".join(speedups)  # the groups' processes inherit it (cells.column_defense)
        print(f"compiled loops: {', '.join(f'{d} (x{x} measured)' for d, x in speedups.items()) or 'none'} "
              f"(probe: {len(lines)} lines)", flush=True)
    units = [u for u in load_queue(args.queue, args.profile, speedups) if u.id.startswith(args.select)]
    if not units:
        raise SystemExit(f"no unit of the queue starts with {args.select!r}")
    if args.command == "list":
        left = 0
        for u in units:
            done = is_done(u, args.results)
            left += 0 if done else u.estimate_s
            print(f"{'done' if done else '    '}  {u.id:<34} {u.table}/{u.profile} {','.join(u.attacks)}"
                  f"{' ' + u.model if u.model else ''}{f' {u.clean_per_class}/class' if u.clean_per_class else ''}"
                  f"  ~{u.estimate_s:.0f} s")
        print(f"{sum(not is_done(u, args.results) for u in units)} of {len(units)} units left, ~{left:.0f} "
              "process-seconds by the estimates (models and groups; the runner runs several processes at once)")
        return 0
    run(units, args.out, budget=args.budget, processes=args.processes, device=args.device,
        data_root=args.data_root, cache_dir=args.cache_dir, results=args.results)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
