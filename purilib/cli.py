"""``purilib run``, ``list``, ``index`` and ``check``: regenerating a table from the command line.

``run TABLE [options]`` (what ``./reproduce.sh`` calls): the request checked before any kernel starts
(``check``: ``RunSpec.build``, then the data and Ray), then each table's notebook executed by papermill with
the request as its parameters; the executed notebook, the record of the run, is written beside the last
good one and moved over it only when the run succeeded.  Killing the command stops papermill and its
kernel (a process group of their own); the interrupted notebook goes beside the record as
``<notebook>.failed.ipynb``.  Then the index of ``results/README.md`` is rewritten.

``check TABLE PROFILE [options]``: prints one line per table to run, ``table_id notebook attacks-json
defenses-json``, tab-separated (names trimmed), or one line saying what is wrong and how to fix it, exit
status 2.  For real CIFAR-10 it also decodes the data set once (cached), so that an unreadable archive is
named here, not in a notebook traceback.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import settings
from .profiles import PROFILES
from .settings import DataNotFoundError
from .spec import RunSpec
from .tables import TABLES, resolve_tables

CHECKOUT = Path(__file__).resolve().parents[1]


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _check_image_folder(root, table, profile):
    """The ImageNet layout under ``root``: train/<class>/ and val/<class>/ (or test/) with the same classes,
    so that no label is shifted; checked before hours of decoding."""
    from .data import image_folder_classes
    where = f"{table.id} on the {profile.name} profile reads an ImageNet folder (--data-root /path/to/imagenet, " \
            "holding train/<class>/ and val/<class>/)"
    test = root / "test" if (root / "test").is_dir() else root / "val"
    for folder in (root / "train", test):
        if not folder.is_dir() or not image_folder_classes(folder):
            raise DataNotFoundError(f"{where}: '{folder}' has no class folders")
    train_classes, test_classes = image_folder_classes(root / "train"), image_folder_classes(test)
    if train_classes != test_classes:
        differ = sorted(set(train_classes) ^ set(test_classes))
        raise DataNotFoundError(f"{where}: '{root / 'train'}' and '{test}' have different class folders "
                                f"({len(train_classes)} and {len(test_classes)}; e.g. {', '.join(differ[:3])})")


class _Parser(argparse.ArgumentParser):
    """argparse, its refusals one line: ``error: --profile needs a value (see --help)``, exit status 2."""

    def error(self, message):
        message = re.sub(r"argument (--[\w-]+)(/-\w)?: expected one argument", r"\1 needs a value", message)
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _number(text):
    """A count as given: an int where it is digits, else the text, for ``RunSpec.build`` to refuse."""
    return int(text) if isinstance(text, str) and text.strip().isdigit() else text


def _request(parser):
    """The options of a table request (``run`` and ``check``)."""
    parser.add_argument("--profile", default="smoke", help="smoke | cpu | gpu | paper (default smoke)")
    parser.add_argument("--seeds", default="1", help="models trained per attack (default 1)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--data-root", default=None, help="where CIFAR-10 is (default $PURILIB_DATA_ROOT, else ./data)")
    parser.add_argument("--attacks", default="", help="rows A,B,... (names as in purilib list)")
    parser.add_argument("--defenses", default="", help="columns X,Y,...")
    parser.add_argument("--clean-per-class", default=None, help="clean images per class for every defense (1: one-shot)")
    parser.add_argument("--model", default=None, help="every model's network (several: a,b); default the paper's")
    parser.add_argument("--workers", default="auto", help="jobs at once (local processes) or auto")
    parser.add_argument("--executor", default="local", help="local | ray")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--from-records", action="store_true", help="train nothing: tabulate the records there")


def check(table, profile="smoke", data_root=None, device="auto", attacks="", defenses="", clean_per_class=None,
          seeds=1, model=None, workers="auto", executor="local", **_):
    """The request's specs, one per table (``RunSpec.build`` refuses a bad one), its data and Ray checked.
    A refused request costs no import of torch (a second or more): only the device and the data need it."""
    tables = resolve_tables(table)
    attacks, defenses = _names(attacks), _names(defenses)
    # the request, checked where every run checks it (RunSpec.build); then what only a run's start can check:
    # the device, that the data are there and readable, and Ray
    specs = [RunSpec.build(t.id, profile, attacks=attacks, defenses=defenses, seeds=_number(seeds),
                           clean_per_class=_number(clean_per_class), model=model, device=device,
                           workers=_number(workers), executor=executor, log=lambda *_: None) for t in tables]
    settings.auto_workers_cap()  # a bad PURILIB_WORKERS, refused here
    from .data import load_cifar10
    from .devices import resolve_device
    resolve_device(device)
    for spec in specs:  # each table's data under the profile: CIFAR-10 (32x32), or its ImageNet recipe's
        if spec.profile.training["dataset"] == "cifar10":
            load_cifar10("test", settings.data_root(data_root))  # decoded once, cached; names a bad file
        elif spec.profile.training["dataset"] == "image_folder":
            _check_image_folder(settings.data_root(data_root), spec.table, spec.profile)
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'purilib[ray]'") from None
    return specs


def _absolute(path):
    return str(Path(path).expanduser().resolve()) if path else path


def run(argv) -> int:
    parser = _Parser(prog="purilib run", description="Regenerate a table: its notebook executed by papermill, "
                     "results in results/<table>/<profile>/.")
    parser.add_argument("table", help="a table id (nft-table1) or a number (table1: Table 1 of every paper)")
    _request(parser)
    args = parser.parse_args(argv)
    # the notebook runs in notebooks/: it gets absolute paths (against the caller's directory)
    data_root = _absolute(args.data_root or os.environ.get("PURILIB_DATA_ROOT")) or str(CHECKOUT / "data")
    for name in ("PURILIB_CACHE_DIR", "PURILIB_RESULTS_DIR"):
        if os.environ.get(name):
            os.environ[name] = _absolute(os.environ[name])
    try:
        specs = check(**{**vars(args), "data_root": data_root})
    except (ValueError, DataNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for spec in specs:
        status = _execute(spec, args, data_root)
        if status:
            return status
    try:
        from .index import write_index
        write_index()  # results/README.md's index
    except Exception as error:  # the table is written; a stale index is not worth failing the run for
        print(f"(index not rewritten: {error})", file=sys.stderr)
    return 0


def _parameters(spec, args, data_root):
    """papermill's parameters for the notebook: the request as given (the notebook builds its RunSpec)."""
    params = {"profile": spec.profile.name, "seeds": spec.seeds, "device": args.device, "output_dir": str(spec.output_dir),
              "data_root": data_root}
    if args.attacks:
        params["attacks"] = list(spec.attacks)
    if args.defenses:
        params["defenses"] = list(spec.defenses)
    for name in ("clean_per_class", "model", "ray_address"):
        if getattr(args, name) is not None:
            params[name] = _number(getattr(args, name)) if name == "clean_per_class" else getattr(args, name)
    if args.from_records:
        params["from_records"] = True
    if args.workers != "auto":
        params["workers"] = spec.workers
    if args.executor != "local":
        params["executor"] = args.executor
    return params


def _execute(spec, args, data_root) -> int:
    """The table's notebook through papermill, in a process group of its own (stopped with this process)."""
    out, notebook = spec.output_dir, spec.table.notebook
    out.mkdir(parents=True, exist_ok=True)
    running, failed = out / f".{Path(notebook).stem}.running.ipynb", out / f"{Path(notebook).stem}.failed.ipynb"
    command = [sys.executable, "-m", "papermill", str(CHECKOUT / "notebooks" / notebook), str(running),
               "--cwd", str(CHECKOUT / "notebooks"), "--log-output", "--kernel", "python3"]
    for name, value in _parameters(spec, args, data_root).items():
        command += ["-y", json.dumps({name: value})]
    print(f"== {spec.table.id}, profile {spec.profile.name}, seeds {spec.seeds} -> {out}/", file=sys.stderr)
    start = time.time()
    env = {**os.environ, "PURILIB_PROGRESS": os.environ.get("PURILIB_PROGRESS", "1")}
    child = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        status = child.wait()
    except KeyboardInterrupt:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait()
        if running.exists():  # an interrupted run's notebook goes beside the last good one, never over it
            running.replace(failed)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if status != 0:
        if running.exists():
            running.replace(failed)
        print(f"== {spec.table.id} FAILED (status {status}): {failed}; the last good record is untouched",
              file=sys.stderr)
        return status
    running.replace(out / notebook)
    failed.unlink(missing_ok=True)
    print(f"== {spec.table.id} done in {time.time() - start:.0f} s: {out}/table.md", file=sys.stderr)
    return 0


def list_tables():
    print("tables and figures (./reproduce.sh ID, or its short name: table1 runs every paper's Table 1):")
    w = max(len(t.id) for t in TABLES.values())
    for t in TABLES.values():
        print(f"  {t.id:<{w}} {t.paper}: {t.title}")
        if t.description:
            print(f"  {'':<{w}} {t.description}")
        if t.gathers:
            print(f"  {'':<{w}} runs nothing: reads the records of the other tables of the profile")
        else:
            print(f"  {'':<{w}} rows {', '.join(t.attacks)}; columns {', '.join(t.defenses)}")
        for name, rows in (t.default_rows or {}).items():
            print(f"  {'':<{w}} on {name}, unless --attacks names rows: {', '.join(rows)}")
        if t.dataset != "CIFAR-10":
            print(f"  {'':<{w}} {t.dataset}; profiles {', '.join(t.profiles)}")
    print("profiles:")
    for p in PROFILES.values():
        print(f"  {p.name:<7} {p.description}")


def main(argv):
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "run":
        return run(rest)
    if command == "list":
        list_tables()
        return 0
    if command == "index":
        from .index import write_index
        print(f"index written: {write_index(rest[0] if rest else None)}")
        return 0
    if command == "check":
        parser = _Parser(prog="purilib check")
        parser.add_argument("table")
        parser.add_argument("profile_name", metavar="profile")
        _request(parser)
        args = parser.parse_args(rest)
        try:
            specs = check(**{**vars(args), "profile": args.profile_name})
        except (ValueError, DataNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        attacks, defenses = _names(args.attacks), _names(args.defenses)
        print("\n".join("\t".join([s.table.id, s.table.notebook, json.dumps(attacks), json.dumps(defenses)])
                        for s in specs))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
