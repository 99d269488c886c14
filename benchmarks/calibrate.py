"""Calibrate a profile: train (or load) one backdoored model, run defenses on it, print ACC / ASR / RA.

    python benchmarks/calibrate.py ATTACK DEFENSE[:key=value...][,DEFENSE...] [--profile cpu] [training_key=value ...]

e.g. ``python benchmarks/calibrate.py BadNets NFT,FT width=0.125 epochs=30`` or
``python benchmarks/calibrate.py BadNets NFT:steps=3000``; an empty DEFENSE ("") only trains
the model, e.g. ``python benchmarks/calibrate.py BPPA "" "attack_kwargs={'neg_ratio': 0.0}"``.  Values are Python
literals.  Used to choose the ``cpu`` profile; see the issue notes for results.  It computes with the
profile's CPU threads (smoke: one), as the tables' workers do: the same weights as theirs, e.g. the smoke
calibration ``python benchmarks/calibrate.py Dyn-one "" seed=1 --profile smoke``.
"""
import argparse
import ast

from purilib.data import clean_subset
from purilib.defenses import create_defense
from purilib.devices import cpu_threads
from purilib.metrics import evaluate
from purilib.profiles import resolve, training_settings
from purilib.training import load_training_data, restore_attack, train_backdoored_model


def literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attack")
    parser.add_argument("defenses")
    parser.add_argument("overrides", nargs="*", help="training settings, key=value")
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    profile = resolve(args.profile)
    with cpu_threads(profile.threads):
        calibrate(args, profile)


def calibrate(args, profile):
    training = training_settings(profile, args.attack)  # the tables' recipe: the same cached model
    for item in args.overrides:
        key, value = item.split("=", 1)
        training[key] = literal(value)
    model, manifest = train_backdoored_model(attack=args.attack, **training)
    data = load_training_data(manifest["config"])
    train, test, attack, reserved = data.train, data.test, data.attack, data.reserved
    restore_attack(attack, manifest)
    clean = clean_subset(train, reserved, profile.clean_per_class, seed=0)
    print("before", {k: manifest[k] for k in ("acc", "asr", "ra") if k in manifest},
          f"train {manifest['train_seconds']} s", flush=True)
    for spec in filter(None, args.defenses.split(",")):
        name, *settings = spec.split(":")
        overrides = {k: literal(v) for k, v in (s.split("=", 1) for s in settings)}
        defense = create_defense(name, bf16=profile.bf16, **overrides)
        result = evaluate(defense.purify(model, clean), test, attack, bf16=profile.bf16)
        stats = {k: v for k, v in defense.stats.items() if k != "seconds"}
        print(spec, {k: round(v, 2) for k, v in result.items()}, f"{defense.stats['seconds']:.0f} s", stats, flush=True)


if __name__ == "__main__":
    main()
