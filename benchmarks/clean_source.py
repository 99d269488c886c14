"""A defense with its clean data from the held-out reserve and from the training split the model learned
(RNP's and FIP's released code), on the same profile models: ACC / ASR and what the defense logged.

    PURILIB_DATA_ROOT=... python benchmarks/clean_source.py [--profile cpu] [--attacks BadNets,Blend]
        [--defense RNP] [--out results/benchmarks/cpu/clean_source.jsonl]

One JSON line per (attack, source): the defense's ACC / ASR / RA on the full test set and its
``defense_stats`` (RNP: unlearning steps, the accuracy it stopped at, neurons pruned and what each
threshold of the released sweep would prune).  Uses the table runner's own rows (``cells.prepare_row``):
the clean sets are those a table would give.
"""
import argparse
import json
import time
from pathlib import Path

from purilib.cells import prepare_row
from purilib.data import CLEAN_SOURCES
from purilib.defenses import create_defense
from purilib.devices import device_name, resolve_device
from purilib.metrics import evaluate
from purilib.profiles import defense_overrides, resolve
from purilib.provenance import code_version


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--attacks", default="BadNets,Blend")
    parser.add_argument("--defense", default="RNP")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    prof, device = resolve(args.profile), resolve_device(args.device)
    out = Path(args.out) if args.out else None
    for attack_name in args.attacks.split(","):
        row = prepare_row(prof, attack_name, 0, prof.clean_per_class, device)
        for source in CLEAN_SOURCES:
            clean = row.clean_set(source)
            defense = create_defense(args.defense, device=device, bf16=prof.bf16, progress=False,
                                     **defense_overrides(prof, args.defense))
            result = evaluate(defense.purify(row.model, clean), row.test, row.attack, device=device, bf16=prof.bf16)
            line = {"profile": prof.name, "attack": attack_name, "defense": args.defense, "clean_source": source,
                    "clean_images": len(clean), "clean_checksum": clean.checksum(),
                    **{k: round(v, 2) for k, v in result.items()}, "acc_before": round(row.before["acc"], 2),
                    "asr_before": round(row.before["asr"], 2), "defense_stats": defense.stats,
                    "weights_digest": row.manifest["weights_digest"], "code_version": code_version(),
                    "device_name": device_name(device), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            print(json.dumps(line, default=float), flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "a") as f:
                    f.write(json.dumps(line, default=float) + "\n")


if __name__ == "__main__":
    main()
