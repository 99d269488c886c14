"""The defense interface and the loop pieces every defense shares.

A defense gets a (suspect) model and a small clean set, never anything about
the trigger, and returns a new model; the input model is left untouched.
Each method module defines ``DEFAULTS``, its hyperparameters in one place;
``create_defense(name, **overrides)`` checks overrides against them.

Shared here, once: ``Defense.batches`` (augmented clean batches drawn with
replacement, made on the defense's device), ``Defense.autocast``, ``Defense.steps``
(the progress bar over a loop, and the per-step callback), ``cosine_lr``,
``count_trainable`` and ``cross_entropy_step``.  Structure helpers (classifier,
BN layers, masks, freezing) live in :mod:`purilib.layers`.

Devices: ``self.device`` is resolved once, in ``__init__``; ``purify`` moves a copy
of the model there.  Every tensor a method makes is made on that device (see
:mod:`purilib.devices`).
"""
import copy
import math
import time

import torch
import torch.nn.functional as F

from ..augment import random_crop_flip
from ..data import ImageSet
from ..devices import fork_rng, generator, resolve_device
from ..progress import progress


class Defense:
    name = "defense"
    DEFAULTS: dict = {}
    checkpoint_every = None  # steps between the checkpoints a table evaluates (the method's released cadence)

    def __init__(self, device="auto", bf16=False, seed=0, progress=True, callback=None, fast=True, compile=False,
                 **overrides):
        unknown = set(overrides) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        self.config = {**self.DEFAULTS, **overrides}
        self.device, self.bf16, self.seed, self.progress = resolve_device(device), bf16, seed, progress
        self.callback = callback  # callback(step, model), called after each step of ``steps`` loops
        # fast=False: the reference loop benchmarks/gpu_speed.py compares with (batches drawn on the CPU,
        # the host waiting for the device every step, as the loops did before these primitives)
        self.fast = fast
        # compile: the loop's network through torch.compile (``compiled``): False (the plain loop, the reference
        # and the default until it is measured on a GPU), "auto" (on CUDA only), True, or a torch.compile
        # backend name ("eager": graph capture alone, what the CPU tests check)
        self.compile = compile
        self.stats = {}

    def purify(self, model: torch.nn.Module, clean: ImageSet) -> torch.nn.Module:
        check_clean_set(clean, model, self.name)
        model = copy.deepcopy(model).to(self.device)
        start, self.callback_seconds = time.time(), 0.0
        with fork_rng():  # seeded here, the caller's RNG (CPU and GPU) left as it was
            torch.manual_seed(self.seed)
            model = self.run(model, clean)
        # the method's own time: what a callback measured along the way (checkpoints, a trajectory) is not
        self.stats["seconds"] = time.time() - start - self.callback_seconds
        if self.callback_seconds:
            self.stats["callback_seconds"] = round(self.callback_seconds, 2)
        return model.eval()

    def run(self, model, clean):
        raise NotImplementedError

    def autocast(self):
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def batches(self, clean: ImageSet, batch_size: int, steps: int, seed_offset=0):
        return clean_batches(clean, batch_size, steps, self.device, self.seed + seed_offset,
                             draw_on=self.device if self.fast else "cpu")

    def compiled(self, model):
        """``model`` as the loop should call it: through ``torch.compile`` when ``self.compile`` asks, the
        plain model otherwise.  Parameters, buffers and train / eval mode are the model's own; if compiling
        fails at the first call, the loop goes on with the plain model (said once)."""
        cuda = torch.device(self.device).type == "cuda"
        if not self.compile or (self.compile == "auto" and not cuda):
            return model
        # inductor with CUDA graphs (as training's): a defense step is launch-bound, one graph replay per
        # forward and one per backward; on the CPU the same mode is plain inductor
        options = ({"backend": self.compile} if isinstance(self.compile, str) and self.compile != "auto"
                   else {"mode": "reduce-overhead"})
        try:
            return _FirstCallFallback(torch.compile(model, **options), model, self.name, self.stats)
        except Exception as error:  # noqa: BLE001  (no compiler here): the plain loop
            print(f"{self.name}: torch.compile unavailable ({type(error).__name__}: {error}); running uncompiled")
            return model

    def captured(self, step):
        """``step`` as the loop should call it: a :class:`CapturedStep` (the whole step, forward, backward and
        optimizer, replayed as one CUDA graph) when ``self.compile`` asks, ``step`` itself otherwise.  For the
        loops ``torch.compile`` cannot take (a double backward: FIP, Fast FIP, I-BAU).  ``compile="eager"``, or any
        device but CUDA: the same fixed buffers without a graph (what the CPU tests check)."""
        cuda = torch.device(self.device).type == "cuda"
        if not self.compile or (self.compile == "auto" and not cuda):
            return step
        return CapturedStep(step, self.name, graph=self.graphs, stats=self.stats)

    @property
    def graphs(self):
        """Whether ``captured`` steps are CUDA graphs (an optimizer they step must then be ``capturable``)."""
        return bool(self.compile) and self.compile != "eager" and torch.device(self.device).type == "cuda"

    def steps(self, iterable, total, desc=None, model=None):
        """``iterable`` with a progress bar; after each item, ``callback(step, model)`` if one was given."""
        for step, item in enumerate(progress(iterable, total=total, desc=desc or self.name, enabled=self.progress)):
            yield step, item
            if not self.fast and torch.device(self.device).type == "cuda":
                torch.cuda.synchronize(self.device)
            if self.callback is not None and model is not None:
                began = time.time()
                self.callback(step, model)
                self.callback_seconds = getattr(self, "callback_seconds", 0.0) + time.time() - began


class _FirstCallFallback(torch.nn.Module):
    """A compiled network that falls back to the plain one if its first call fails (compilation errors
    surface there, if at all).  A module whose only submodule is the plain network: its modules, mode and
    parameters are that network's."""

    def __init__(self, compiled, plain, who, stats=None):
        super().__init__()
        self.plain = plain
        object.__setattr__(self, "network", compiled)  # not a submodule: the plain network's modules, once
        self.who, self.first, self.stats = who, True, {} if stats is None else stats

    def forward(self, *args, **kwargs):
        if not self.first:
            return self.network(*args, **kwargs)
        self.first = False
        try:
            output = self.network(*args, **kwargs)
            self.stats["compiled"] = True  # in the record: the loop ran compiled
            return output
        except Exception as error:  # noqa: BLE001
            print(f"{self.who}: torch.compile failed ({type(error).__name__}: {str(error)[:200]}); running uncompiled")
            self.stats["compiled"] = False
            object.__setattr__(self, "network", self.plain)
            return self.plain(*args, **kwargs)


class CapturedStep:
    """``step(*inputs) -> tensor or None`` replayed as one CUDA graph: a defense step at these sizes is bound
    by its thousands of kernel launches, not by arithmetic, and a replay launches them at once.

    The first ``warmup`` calls run eagerly (on a side stream, as capture requires: optimizer state and
    cuDNN's choices are made there); the next one captures the step on fixed copies of its inputs, and every
    later call copies its inputs into them, replays, and returns a copy of the output.  So the step must read
    its data only from its inputs (random numbers included: draw them outside), make no host sync, and take
    the same path every call; it returns one tensor (or None).  ``graph=False``: the same fixed buffers
    without a graph, on any device.  If capture fails, the step runs eagerly from then on (said once)."""

    def __init__(self, step, who, graph=True, warmup=3, stats=None):
        self.step, self.who, self.graph, self.warmup = step, who, graph, warmup
        self.stats = {} if stats is None else stats  # the defense's: "cuda_graph" says whether replays ran
        self.calls, self.failed, self.inputs, self.output, self.cuda_graph = 0, False, None, None, None

    def __call__(self, *inputs):
        self.calls += 1
        if self.calls <= self.warmup:
            return self._side_stream(inputs) if self.graph else self.step(*inputs)
        if self.failed:
            return self.step(*inputs)
        if self.inputs is None:
            self.inputs = [x.clone() for x in inputs]
            if self.graph and not self._capture():
                self.failed = True
                return self.step(*inputs)
        else:
            for fixed, x in zip(self.inputs, inputs):
                fixed.copy_(x)
        if self.cuda_graph is None:  # no graph: the step on the fixed buffers
            output = self.step(*self.inputs)
        else:
            self.cuda_graph.replay()
            output = self.output
        return None if output is None else output.clone()

    def _side_stream(self, inputs):
        stream = torch.cuda.Stream(device=inputs[0].device)
        stream.wait_stream(torch.cuda.current_stream(inputs[0].device))
        with torch.cuda.stream(stream):
            output = self.step(*inputs)
        torch.cuda.current_stream(inputs[0].device).wait_stream(stream)
        return output

    def _capture(self):
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.output = self.step(*self.inputs)
        except Exception as error:  # noqa: BLE001  (an op that cannot be captured): the eager step
            print(f"{self.who}: CUDA graph capture failed ({type(error).__name__}: {str(error)[:200]}); "
                  "running uncaptured")
            self.output = None
            self.stats["cuda_graph"] = False
            return False
        self.cuda_graph = graph
        self.stats.setdefault("cuda_graph", True)  # a step whose capture failed keeps it False
        return True


def check_clean_set(clean, model, who="purify"):
    """Refuse, in one line naming the fix, a clean set the defenses would misread: they take uint8
    images [N, 3, H, W] in 0..255 (the size the model expects) and one int64 label per image."""
    if not isinstance(clean, ImageSet):
        raise TypeError(f"{who}: the clean data must be a purilib.data.ImageSet(images, labels, num_classes), "
                        f"not {type(clean).__name__}")
    images, labels = clean.images, clean.labels
    if len(labels) == 0:
        raise ValueError(f"{who}: the clean set is empty")
    if images.ndim != 4:
        raise ValueError(f"{who}: images must be a [N, 3, H, W] batch, got shape {list(images.shape)}")
    if images.shape[1] != 3:
        hint = " (channels last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise ValueError(f"{who}: images must have 3 channels first, [N, 3, H, W]; got {list(images.shape)}{hint}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{who}: images must be uint8 in 0..255, got {images.dtype} (floats in [0, 1]? "
                         "use (images * 255).round().to(torch.uint8))")
    expected = getattr(model, "input_size", None)
    if expected is not None and tuple(images.shape[2:]) != tuple(expected):
        raise ValueError(f"{who}: the model takes {expected[0]}x{expected[1]} images, got "
                         f"{images.shape[2]}x{images.shape[3]}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{who}: one label per image is needed: {len(images)} images, labels of shape "
                         f"{list(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{who}: labels must be integer class indices, got {labels.dtype}")
    classes = getattr(model, "num_classes", clean.num_classes)
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{who}: labels must be in [0, {classes}), got {int(labels.min())}..{int(labels.max())}")


def clean_batches(clean: ImageSet, batch_size: int, steps: int, device, seed=0, draw_on=None):
    """``steps`` augmented batches (crop + flip), drawn with replacement from the clean set,
    as the seed papers' code does with a RandomSampler(replacement=True).  The images move to
    ``device`` once; indices and augmentation are drawn there (or on ``draw_on``)."""
    g = generator(seed, draw_on or device)
    images, labels = clean.images.to(device), clean.labels.to(device)
    for _ in range(steps):
        index = torch.randint(0, len(labels), (batch_size,), generator=g, device=g.device).to(device)
        x = random_crop_flip(images[index].float().div_(255), generator=g)
        yield x.contiguous(memory_format=torch.channels_last), labels[index]


def cosine_lr(step, steps, lr, final_lr=0.0):
    return final_lr + 0.5 * (lr - final_lr) * (1 + math.cos(math.pi * step / max(1, steps)))


def count_trainable(parameters) -> int:
    return sum(p.numel() for p in parameters)


def cross_entropy_step(model, optimizer, x, y, autocast):
    """One plain step; the loss is returned as a tensor (reading it is a host sync)."""
    with autocast:
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
