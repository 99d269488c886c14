"""The first command to run on a GPU machine: does every attack and defense run there?

    python benchmarks/gpu_check.py [--device auto|cpu|cuda] [--data-root DIR] [--out FILE]

Needs only torch, torchvision, numpy, pillow, safetensors and tqdm (no papermill, no
jupyter); run it from a checkout with ``PYTHONPATH=$PWD``.  It reads CIFAR-10 from the
data root and, in a fresh cache (nothing reused):

1. trains the benign model and one model per registered attack for one epoch (their own
   networks too, with shortened budgets), at full width on a GPU, and evaluates each;
2. runs every registered defense for 20 steps on the BadNets model and evaluates it.

One JSON line per item (name, ok or the error, seconds, ACC / ASR), then a summary line,
on stdout and, with ``--out``, appended to FILE as each item finishes.  ``--device cpu``
runs the same on the CPU at 1/8 width on 200 images per class.  Exit status 1 if any item
failed.  On one H100/H200 it is meant to take under 5 minutes.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback

import torch

from purilib.attacks import ATTACKS
from purilib.data import clean_subset
from purilib.defenses import DEFENSES, create_defense
from purilib.devices import device_name, resolve_device
from purilib.metrics import evaluate
from purilib.training import load_training_data, train_backdoored_model

# the attacks' own networks, shortened: this checks that they run, not what they learn
SHORT_BUDGETS = {
    "TrojanNN": dict(trigger_steps=50), "CLB": dict(pgd_steps=5), "ISSBA": dict(encoder_steps=200),
    "Dynamic": dict(mask_epochs=1), "FBA": dict(style_steps=50, detox_images=256, detox_epochs=1),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--width", type=float, default=None, help="default: 1 on a GPU, 1/8 on the CPU")
    parser.add_argument("--per-class", type=int, default=None,
                        help="training images per class; default: all on a GPU, 200 on the CPU")
    parser.add_argument("--defense-steps", type=int, default=20)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    gpu = device.startswith("cuda")
    width = args.width if args.width is not None else (1.0 if gpu else 0.125)
    per_class = args.per_class if args.per_class is not None else (None if gpu else 200)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="purilib-gpu-check-")
    recipe = dict(dataset="cifar10", dataset_kwargs={"per_class": per_class} if per_class else {},
                  model="preact_resnet18", width=width, epochs=1, batch_size=128, lr=0.1, schedule="cosine",
                  warmup_epochs=0, bf16=gpu)
    results, start = [], time.time()

    def report(item, run):
        began = time.time()
        line = {"item": item}
        try:
            line.update(ok=True, **run())
        except Exception as error:  # noqa: BLE001  a failure is a result here
            line.update(ok=False, error=f"{type(error).__name__}: {error}",
                        where=traceback.extract_tb(error.__traceback__)[-1].filename.split("purilib/")[-1])
        if gpu:
            torch.cuda.synchronize()
        line["seconds"] = round(time.time() - began, 2)
        results.append(line)
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")

    def train(attack):
        # uncompiled: one epoch per model would spend its time compiling; gpu_speed.py times compile
        model, manifest = train_backdoored_model(attack=attack, device=device, data_root=args.data_root,
                                                 cache_dir=cache, attack_kwargs=SHORT_BUDGETS.get(attack, {}),
                                                 compile=False, **recipe)
        trained[attack] = (model, manifest)
        return {k: manifest[k] for k in ("acc", "asr") if k in manifest} | {"train_seconds": manifest["train_seconds"]}

    trained = {}
    report("train Benign", lambda: train("Benign"))
    for attack in ATTACKS:
        report(f"train {attack}", lambda attack=attack: train(attack))

    if "BadNets" in trained:
        model, manifest = trained["BadNets"]
        data = load_training_data(manifest["config"], args.data_root, cache, device)
        train_set, test, attack, reserved = data.train, data.test, data.attack, data.reserved
        clean = clean_subset(train_set, reserved, per_class=10)

        def purify(name):
            overrides = {"steps": args.defense_steps}
            if name == "I-BAU":
                overrides["rounds"] = 2
            defense = create_defense(name, device=device, progress=False, **overrides)
            metrics = evaluate(defense.purify(model, clean), test, attack, device=device)
            return {"acc": round(metrics["acc"], 2), "asr": round(metrics["asr"], 2)}
        for name in DEFENSES:
            report(f"defense {name}", lambda name=name: purify(name))

    failed = [r["item"] for r in results if not r["ok"]]
    summary = {"summary": True, "ok": len(results) - len(failed), "failed": failed, "device": device,
               "device_name": device_name(device), "torch": torch.__version__, "width": width,
               "per_class": per_class, "host": platform.node(), "seconds": round(time.time() - start, 1)}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PURILIB_PROGRESS", "0")
    sys.exit(main())
