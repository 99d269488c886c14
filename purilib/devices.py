"""Devices: resolved once, and the convention every module follows.

The convention: **a new tensor is made on the device of what it is used with.**
Write ``torch.zeros(..., device=x.device)``, ``torch.ones_like(w)``,
``torch.randint(..., generator=g, device=g.device)``; never a bare
``torch.zeros(...)``, which lands on torch's default device (the CPU) while the
model may be on a GPU.  Random numbers come from a ``torch.Generator`` made on
the device that uses them (``generator(seed, device)``).  Networks are moved
with ``.to(device)`` after construction.  Data sets (``ImageSet``) live on the
CPU; a batch is moved to the model's device where it is used.

``strict_devices()`` makes a violation fail on a CPU-only machine: inside it, a
factory call from purilib that names no device makes its tensor on the
``meta`` device, so using it with a real tensor raises, as a CPU tensor meeting
a CUDA one would.  The device tests run every attack and defense inside it.
"""
import os
import platform
import sys
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode


def resolve_device(device="auto") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; anything else is checked and returned."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but torch sees no CUDA device (use --device cpu)")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(f"device '{device}' asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device '{device}'; use auto, cpu, cuda or cuda:N")
    return device


def device_name(device) -> str:
    """What a result was computed on, for its record: the GPU's name, or the CPU's model and thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


@contextmanager
def cpu_threads(threads):
    """Compute with ``threads`` CPU threads inside the block (None: leave the count as it is)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_cores() -> int:
    """The CPU cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generator(seed: int, device="cpu") -> torch.Generator:
    """A seeded random-number generator on ``device`` (draw with ``device=g.device``)."""
    return torch.Generator(device=device).manual_seed(int(seed))


@contextmanager
def fork_rng():
    """Seed inside, leave the caller's random state as it was: the CPU's and every visible GPU's
    (``torch.manual_seed`` seeds them all; ``torch.random.fork_rng(devices=[])`` restores only the CPU)."""
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        yield


_FACTORIES = (torch.ones, torch.zeros, torch.empty, torch.full, torch.rand, torch.randn, torch.randint,
              torch.randperm, torch.arange, torch.linspace, torch.eye, torch.tensor, torch.normal)


class _DeviceTrap(TorchFunctionMode):
    def __init__(self, package):
        super().__init__()
        self.package = package

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and "device" not in kwargs:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller == self.package or caller.startswith(self.package + "."):
                kwargs = {**kwargs, "device": "meta"}
        return func(*args, **kwargs)


@contextmanager
def strict_devices(package="purilib"):
    """Inside: tensors that ``package``'s code makes without naming a device are made on ``meta``
    (see the module docstring); mixing one with a real tensor then fails, as on a GPU."""
    with _DeviceTrap(package):
        yield
