"""A grid's wall time: sequential against ``--workers N``, in one run on one machine.

    PYTHONPATH=$PWD python benchmarks/parallel_speed.py [--profile smoke] [--attacks BadNets,Blend,SIG]
                                                        [--workers 2] [--device auto] [--out FILE]

The models are trained first (untimed, into a fresh cache); then the same cells run twice into fresh
output folders, once one after another and once on N workers, each timed; the records of both are
compared (they must be equal) and the ratio printed as one JSON line (appended to ``--out``).
"""
import argparse
import json
import os
import sys
import tempfile
import time

from purilib import experiment
from purilib.devices import device_name, resolve_device


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="nft-table1")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--attacks", default="BadNets,Blend,SIG")
    parser.add_argument("--defenses", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    attacks = [a.strip() for a in args.attacks.split(",")]
    defenses = [d.strip() for d in args.defenses.split(",")] if args.defenses else None
    device = resolve_device(args.device)
    scratch = tempfile.mkdtemp(prefix="parallel-speed-")
    os.environ["PURILIB_CACHE_DIR"] = os.path.join(scratch, "cache")
    grid = dict(profile=args.profile, attacks=attacks, defenses=defenses, device=device, progress=False)
    experiment.run_table(args.table, output_dir=os.path.join(scratch, "warm"), **{**grid, "defenses": ["No defense"]})
    seconds, records = {}, {}
    for workers in (1, args.workers):
        start = time.perf_counter()
        records[workers] = experiment.run_table(args.table, output_dir=os.path.join(scratch, f"w{workers}"),
                                                workers=workers, **grid)
        seconds[workers] = time.perf_counter() - start
    columns = ["attack", "defense", "acc", "asr", "weights_digest"]
    same = records[1].sort_values(["attack", "defense"])[columns].reset_index(drop=True).equals(
        records[args.workers].sort_values(["attack", "defense"])[columns].reset_index(drop=True))
    line = {"table": args.table, "profile": args.profile, "attacks": attacks, "cells": len(records[1]),
            "sequential_s": round(seconds[1], 1), f"workers_{args.workers}_s": round(seconds[args.workers], 1),
            "ratio": round(seconds[1] / seconds[args.workers], 2), "records_equal": same, "device": device,
            "device_name": device_name(device), "cpus": os.cpu_count()}
    print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    os.environ.setdefault("PURILIB_PROGRESS", "0")
    sys.exit(main())
