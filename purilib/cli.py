"""Helpers for ./reproduce.sh, so that a bad request is refused before any kernel starts.

``python -m purilib.cli list``: the tables and profiles.
``python -m purilib.cli index [RESULTS_DIR]``: rewrite the index of ``results/README.md`` from the records.
``python -m purilib.cli check TABLE PROFILE [--data-root D] [--device D] [--attacks A,B] [--defenses X,Y]
[--clean-per-class K] [--seeds N]``: prints one line per table to run,
``table_id notebook attacks-json defenses-json``, tab-separated (names trimmed), or one line saying what is
wrong and how to fix it, exit status 2.  For real CIFAR-10 it also decodes the data set once
(cached), so that an unreadable archive is named here, not in a notebook traceback.
"""
import argparse
import json
import sys

from . import settings
from .data import DataNotFoundError, load_cifar10
from .devices import resolve_device
from .profiles import PROFILES, get_profile
from .spec import RunSpec
from .tables import TABLES, resolve_tables


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


def check(argv):
    parser = argparse.ArgumentParser(prog="purilib.cli check")
    parser.add_argument("table")
    parser.add_argument("profile")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--attacks", default="")
    parser.add_argument("--defenses", default="")
    parser.add_argument("--clean-per-class", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--model", default=None)
    parser.add_argument("--executor", default="local")
    args = parser.parse_args(argv)
    tables, profile = resolve_tables(args.table), get_profile(args.profile)
    resolve_device(args.device)
    attacks, defenses = _names(args.attacks), _names(args.defenses)
    # the request, checked where every run checks it (RunSpec.build); then what only a run's start can check:
    # that the data are there and readable, and Ray
    specs = [RunSpec.build(t.id, profile.name, attacks=attacks, defenses=defenses, seeds=args.seeds,
                           clean_per_class=args.clean_per_class, model=args.model, device=args.device,
                           executor=args.executor, log=lambda *_: None) for t in tables]
    for spec in specs:  # each table's data under the profile: CIFAR-10 (32x32), or its ImageNet recipe's
        if spec.profile.training["dataset"] == "cifar10":
            load_cifar10("test", settings.data_root(args.data_root))  # decoded once, cached; names a bad file
        elif spec.profile.training["dataset"] == "image_folder":
            _check_image_folder(settings.data_root(args.data_root), spec.table, profile)
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--executor ray needs Ray: pip install 'purilib[ray]'") from None
    return ["\t".join([t.id, t.notebook, json.dumps(attacks), json.dumps(defenses)]) for t in tables]


def main(argv):
    if argv[:1] == ["list"]:
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
        return 0
    if argv[:1] == ["index"]:
        from .index import write_index
        print(f"index written: {write_index(argv[1] if len(argv) > 1 else None)}")
        return 0
    if argv[:1] == ["check"]:
        try:
            lines = check(argv[1:])
        except (ValueError, DataNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
