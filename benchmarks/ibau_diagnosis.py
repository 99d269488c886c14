"""Why does I-BAU lose clean accuracy?  Variants of its settings on one profile model.

    PURILIB_DATA_ROOT=... python benchmarks/ibau_diagnosis.py [--profile cpu] [--attack BadNets] [--steps 100]

Each variant changes one thing against the released settings (Adam lr 1e-3, the profile's
autocast, the perturbation bound 10): BackdoorBench's lr 1e-4 (purilib's default since);
fp32 instead of bf16; no adversary at all (bound 0: delta = 0, so the outer loss is plain
clean cross-entropy and the run is Adam fine-tuning).  BN stays in eval mode, as released.
Prints ACC / ASR / seconds per variant.
"""
import argparse
import json

from purilib.data import clean_subset
from purilib.defenses import create_defense
from purilib.metrics import evaluate
from purilib.profiles import resolve, training_settings
from purilib.training import load_training_data, restore_attack, train_backdoored_model

VARIANTS = {
    "released (Adam 1e-3)": {"lr": 1e-3},
    "BackdoorBench lr 1e-4": {"lr": 1e-4},
    "fp32 (no bf16)": {"lr": 1e-3, "bf16": False},
    "no adversary (bound 0)": {"lr": 1e-3, "norm_bound": 0.0},
    "no adversary, lr 1e-4": {"lr": 1e-4, "norm_bound": 0.0},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--attack", default="BadNets")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--variants", default="|".join(VARIANTS), help="names separated by |")
    args = parser.parse_args()
    profile = resolve(args.profile)
    model, manifest = train_backdoored_model(attack=args.attack, **training_settings(profile, args.attack))
    data = load_training_data(manifest["config"])
    train, test, attack, reserved = data.train, data.test, data.attack, data.reserved
    restore_attack(attack, manifest)
    clean = clean_subset(train, reserved, profile.clean_per_class, seed=0)
    print(json.dumps({"variant": "no defense", **{k: manifest[k] for k in ("acc", "asr")}}), flush=True)
    for name in args.variants.split("|"):
        settings = dict(VARIANTS[name])
        bf16 = settings.pop("bf16", profile.bf16)
        defense = create_defense("I-BAU", bf16=bf16, progress=False, steps=args.steps,
                                 rounds=max(1, args.steps // 50), **settings)
        result = evaluate(defense.purify(model, clean), test, attack, bf16=profile.bf16)
        print(json.dumps({"variant": name, "acc": round(result["acc"], 2), "asr": round(result["asr"], 2),
                          "seconds": round(defense.stats["seconds"]), "steps": args.steps, "bf16": bf16,
                          **settings}), flush=True)


if __name__ == "__main__":
    main()
