"""Per-class clean test accuracy of a profile's backdoored models (trained or cached):

    python benchmarks/per_class_accuracy.py Benign,SIG,CLB [--profile cpu]

Used to diagnose ACC drops: a clean-label attack that poisons every target-class
training image (SIG, CLB at a 10% rate) teaches "target class = trigger", and the
clean target-class test images are then lost while the other classes keep their accuracy.
"""
import argparse

import torch

from purilib.attack_report import backdoored
from purilib.metrics import predict
from purilib.profiles import resolve
from purilib.devices import resolve_device


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attacks", help="comma-separated table names, e.g. Benign,SIG")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    profile, device = resolve(args.profile), resolve_device(args.device)
    for name in args.attacks.split(","):
        model, manifest, attack, test = backdoored(name, profile, 0, device)
        predicted = predict(model, test.images, device=device, bf16=profile.bf16).cpu()
        labels = test.labels
        hits = torch.bincount(labels[predicted == labels], minlength=test.num_classes)
        per_class = 100 * hits / torch.bincount(labels, minlength=test.num_classes)
        target = getattr(attack, "target", None)
        target = 0 if target is None else target  # the benign model: compare with the tables' target class 0
        others = [a for c, a in enumerate(per_class.tolist()) if c != target]
        print(f"{name:<9} ACC {manifest['acc']:6.2f}  per class {[round(a, 1) for a in per_class.tolist()]}"
              f"  mean over classes other than the target ({target}): {sum(others) / len(others):.2f}", flush=True)


if __name__ == "__main__":
    main()
