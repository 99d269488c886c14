"""Operations per defense step: what bounds a defense loop on a GPU, counted on any device.

    PYTHONPATH=$PWD python benchmarks/step_ops.py [--defenses "NFT,ANP"] [--width W] [--out FILE]

On an H200 the defense loops are bound by per-step overhead, not arithmetic (NFT's 1000
steps of a 1/1-width ResNet-18 on 128 images took ~9 s; the arithmetic is well under 1 s): each
eager operation costs a Python call, a dispatch and a kernel launch.  This counts the ATen
operations a defense dispatches per step (a ``TorchDispatchMode``: the operations the
autograd engine runs for a backward pass included; a ``_foreach_`` operation over many
tensors counts once, as it is one launch, or a few, on CUDA).  Per step: the count at
2 x ``--steps`` minus the count at ``--steps``, divided by ``--steps``, so setup (masks,
copies, the final pruning) cancels.  The count does not depend on the device or the width;
it runs on the CPU in seconds.  One JSON line per defense.

Counted on the CPU, a few operations are no launch on CUDA either: Adam's and SGD's step counters
live on the CPU there too (I-BAU's ``_local_scalar_dense`` and ``pow``: Adam's bias corrections).
"""
import argparse
import contextlib
import json
import os
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from purilib.data import create_dataset
from purilib.defenses import DEFENSES, create_defense
from purilib.models import create_model
from purilib.provenance import code_version


NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}  # allocation only


class CountOps(TorchDispatchMode):
    """Counts the operations that launch work: views (``detach``, ``view``, ``t`` ...) and bare
    allocations do not."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def optimizers_as_on_cuda():
    """torch's optimisers take their ``foreach`` path by default only on CUDA; on the CPU they loop over
    the parameters.  Counted on the CPU, the optimiser step is made the one a GPU runs."""
    import torch.optim.optimizer as optimizer
    saved = optimizer._get_foreach_kernels_supported_devices
    optimizer._get_foreach_kernels_supported_devices = lambda: [*saved(), "cpu"]
    try:
        yield
    finally:
        optimizer._get_foreach_kernels_supported_devices = saved


def overrides_for(name, steps):
    # I-BAU's budget is rounds x steps; AWM's a round of inner_steps ascent + inner_steps mask steps
    return {"steps": steps} | ({"rounds": 1} if name == "I-BAU" else {}) | (
        {"inner_steps": steps} if name == "AWM" else {})


def count(name, model, clean, steps):
    defense = create_defense(name, device="cpu", progress=False, batch_size=16, **overrides_for(name, steps))
    with optimizers_as_on_cuda(), CountOps() as counter:
        defense.purify(model, clean)
    return counter.ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defenses", default=",".join(DEFENSES))
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--top", type=int, default=5, help="the most frequent operations per step, printed too")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=args.width)
    clean = create_dataset("synthetic", "train", num_train=200)
    for name in [d.strip() for d in args.defenses.split(",") if d.strip()]:
        once, twice = count(name, model, clean, args.steps), count(name, model, clean, 2 * args.steps)
        per_step = {op: (twice[op] - once[op]) / args.steps for op in twice}
        line = {"defense": name, "ops_per_step": round(sum(per_step.values()), 1),
                "most": {op: round(n, 1) for op, n in sorted(per_step.items(), key=lambda kv: -kv[1])[:args.top]},
                "torch": torch.__version__, "code": code_version()}
        text = json.dumps(line)
        print(text, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PURILIB_PROGRESS", "0")
    sys.exit(main())
