"""Run a table's grid through the package's Python API, without papermill or jupyter.

    PYTHONPATH=$PWD python benchmarks/run_grid.py nft-table1 --profile gpu --attacks BadNets,Blend \
        [--defenses "No defense,NFT"] [--device cuda] [--data-root DIR] [--output-dir DIR]

For machines that cannot install papermill (GPU machines often cannot): it writes the same
records as ``./reproduce.sh`` (one JSON per cell under ``<output-dir>/records/``, each as
soon as it finishes) plus table.csv / table.md / asr_acc.png.  Bring the records back and
render the notebook, the record of the run, where papermill is:
``./reproduce.sh nft-table1 --profile gpu --attacks BadNets,Blend --from-records``.
"""
import argparse
import sys

from purilib import experiment, reports
from purilib.spec import RunSpec


def names(text):
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--attacks", type=names, default=None)
    parser.add_argument("--defenses", type=names, default=None)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--clean-per-class", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--executor", default="local")
    args = parser.parse_args(argv)
    try:
        spec = RunSpec.build(args.table, args.profile, attacks=args.attacks, defenses=args.defenses,
                             seeds=args.seeds, device=args.device, data_root=args.data_root, cache_dir=args.cache_dir,
                             output_dir=args.output_dir, clean_per_class=args.clean_per_class,
                             workers=args.workers, executor=args.executor)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = reports.write(experiment.run(spec), spec)
    print(reports.to_markdown(report.summary, args.table, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
