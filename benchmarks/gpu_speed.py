"""Training-step and defense speed, the reference loop against the current one, in one run.

    PYTHONPATH=$PWD python benchmarks/gpu_speed.py [--device auto|cpu|cuda] [--width W] [--bf16 0|1]
                                                  [--defenses "FIP:100,NFT,ANP"] [--defense-steps N] [--out FILE]

1. The training step (PreAct-ResNet-18, SGD, crop + flip, bf16 autocast by default) at batch
   128 and 512 on synthetic CIFAR-sized data resident on the device: ms per step and images/s
   for ``fit(fast=False)`` (the reference: a host sync per step, random numbers drawn on the CPU,
   plain optimizer, no compilation) and ``fit(fast=True)`` (no per-step sync, random numbers on
   the device, fused SGD and ``torch.compile`` on CUDA).  One warm-up epoch (compilation
   included) is not timed.
2. Each defense's wall seconds on one (untrained) model with ``--defense-steps`` steps, with
   ``fast=False`` (the defense reads a number back from the device every step and draws its
   batches on the CPU, as the loops did before the shared primitives) and ``fast=True``; for the
   loops that can (NFT, FT, FT-SAM, FP, ANP, AWM), also ``compile=True`` (``Defense.compiled``: inductor with
   CUDA graphs, ``mode="reduce-overhead"``; on a GPU, or with ``--compile-on-cpu``); for FIP, Fast FIP, I-BAU
   ``compile=True`` is ``Defense.captured``, the whole step (double backward and optimizer) as one CUDA
   graph.  ``compiled_logit_diff``: the largest difference between the compiled and the current loop's
   purified models' logits on the clean images (a graph replays the same kernels: ~0 expected), beside
   ``logit_change``, how far the current loop moved them.  ``--variants current,compiled``: the campaign's
   probe (``campaign run --compile-from``), without the reference loop.

Prints one JSON line per measurement (and appends it to ``--out``), each with the ratio
reference / current.  Defaults: full width on a GPU; on the CPU the ``cpu`` profile's model
(width 1/4, bf16), which must not get slower.
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

from purilib.data import ImageSet, create_dataset
from purilib.defenses import DEFENSES, create_defense
from purilib.devices import device_name, resolve_device
from purilib.models import create_model
from purilib.provenance import code_version
from purilib.training import DEFAULT_TRAINING, fit

COMPILED = ("NFT", "FT", "FT-SAM", "FP", "ANP", "AWM",  # the loops that call Defense.compiled
            "FIP", "Fast FIP", "I-BAU")  # and Defense.captured (the whole step as one CUDA graph)


def timed(device, run):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def training_step(device, width, bf16, batch_size, steps, fast):
    """Seconds per step over ``steps`` steps (one more epoch before, untimed)."""
    n = batch_size * steps
    data = ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device="cpu"),
                    torch.randint(0, 10, (n,), device="cpu"))
    config = {**DEFAULT_TRAINING, "batch_size": batch_size, "epochs": 1, "bf16": bf16, "schedule": "cosine"}
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=width).to(memory_format=torch.channels_last).to(device)
    fit(model, data, config, device, fast=fast)  # warm-up: compilation, cudnn autotuning, allocator
    seconds = timed(device, lambda: fit(model, data, {**config, "seed": 1}, device, fast=fast))
    return seconds / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None, help="default: 1 on a GPU, 1/4 on the CPU")
    parser.add_argument("--bf16", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps; default 100 GPU, 10 CPU")
    parser.add_argument("--batch-sizes", default="128,512")
    parser.add_argument("--defenses", default=",".join(DEFENSES), help='names; "FIP:100": its own step count')
    parser.add_argument("--defense-steps", type=int, default=None, help="default 200 on a GPU, 10 on the CPU")
    parser.add_argument("--out", default=None)
    parser.add_argument("--compile-on-cpu", action="store_true", help="time the compiled loops on the CPU too")
    parser.add_argument("--variants", default="reference,current,compiled",
                        help="of the defenses' loops (current always): 'current,compiled' is the campaign's probe")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    width = args.width if args.width is not None else (1.0 if gpu else 0.25)
    train_steps = args.train_steps or (100 if gpu else 10)
    defense_steps = args.defense_steps or (200 if gpu else 10)
    header = {"device": device, "device_name": device_name(device), "torch": torch.__version__, "width": width,
              "bf16": bool(args.bf16), "code": code_version()}

    def emit(line):
        text = json.dumps({**line, **header})
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")

    for batch_size in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:  # "": the defenses only
        reference = training_step(device, width, bool(args.bf16), batch_size, train_steps, fast=False)
        current = training_step(device, width, bool(args.bf16), batch_size, train_steps, fast=True)
        emit({"item": f"training step, batch {batch_size}", "reference_ms": round(1000 * reference, 2),
              "current_ms": round(1000 * current, 2), "images_per_s": round(batch_size / current),
              "ratio": round(reference / current, 2)})

    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=width).to(device)
    clean = create_dataset("synthetic", "train", num_train=500)
    for item in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        name, _, steps = item.partition(":")  # "FIP:100": that defense with 100 steps
        steps = int(steps) if steps else defense_steps
        seconds = {}
        # reference (fast=False), current (the default), and, for the loops that can, compiled (compile=True,
        # opt-in until measured here); interleaved, the second of each pair kept (warm; compilation is in the
        # first)
        variants = {"reference": dict(fast=False), "current": dict(fast=True)}
        if name in COMPILED and (gpu or args.compile_on_cpu):
            variants["compiled"] = dict(fast=True, compile=True)
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",") or k == "current"}
        with torch.no_grad():
            images = clean.images[:256].to(device).float().div(255)
            logits = {"input": copy.deepcopy(model).eval()(images).float()}  # the defenses get the model as made
        for variant in list(variants) * 2:
            overrides = {"steps": steps} | ({"rounds": 2} if name == "I-BAU" else {})
            defense = create_defense(name, device=device, progress=False, **variants[variant], **overrides)
            purified = []
            seconds[variant] = timed(device, lambda: purified.append(defense.purify(model, clean)))
            with torch.no_grad():
                logits[variant] = purified[0](images).float()
        emit({"item": f"defense {name}", "defense": name, "steps": steps,
              **({"reference_s": round(seconds["reference"], 2),
                  "ratio": round(seconds["reference"] / seconds["current"], 2)} if "reference" in seconds else {}),
              "current_s": round(seconds["current"], 2),
              # how far purification moved the logits: the scale compiled_logit_diff is read against
              "logit_change": round((logits["current"] - logits["input"]).abs().max().item(), 5),
              **({"compiled_s": round(seconds["compiled"], 2),
                  "compiled_ratio": round(seconds["current"] / seconds["compiled"], 2),
                  "compiled_logit_diff": round((logits["compiled"] - logits["current"]).abs().max().item(), 5)}
                 if "compiled" in seconds else {})})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PURILIB_PROGRESS", "0")
    sys.exit(main())
