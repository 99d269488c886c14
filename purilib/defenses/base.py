"""The defense interface and the pieces several defenses share.

A defense gets a (suspect) model and a small clean set, never anything about
the trigger, and returns a new model; the input model is left untouched.
Each method module defines ``DEFAULTS``, its hyperparameters in one place;
``create_defense(name, **overrides)`` checks overrides against them.
"""
import copy
import time

import torch
import torch.nn.functional as F

from ..augment import random_crop_flip
from ..data import ImageSet
from ..provenance import resolve_device


class Defense:
    name = "defense"
    DEFAULTS: dict = {}

    def __init__(self, device="auto", bf16=False, seed=0, progress=True, **overrides):
        unknown = set(overrides) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        self.config = {**self.DEFAULTS, **overrides}
        self.device, self.bf16, self.seed, self.progress = resolve_device(device), bf16, seed, progress
        self.stats = {}

    def purify(self, model: torch.nn.Module, clean: ImageSet) -> torch.nn.Module:
        if len(clean) == 0:
            raise ValueError(f"{self.name}: the clean set is empty")
        model = copy.deepcopy(model).to(self.device)
        start = time.time()
        with torch.random.fork_rng(devices=[]):  # seeded here, the caller's RNG left as it was
            torch.manual_seed(self.seed)
            model = self.run(model, clean)
        self.stats["seconds"] = time.time() - start
        return model.eval()

    def run(self, model, clean):
        raise NotImplementedError

    def autocast(self):
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16)


def clean_batches(clean: ImageSet, batch_size: int, steps: int, device, seed=0):
    """``steps`` augmented batches (crop + flip), drawn with replacement from the clean set,
    as the seed papers' code does with a RandomSampler(replacement=True)."""
    g = torch.Generator().manual_seed(seed)
    images, labels = clean.images.to(device), clean.labels.to(device)
    for _ in range(steps):
        index = torch.randint(0, len(labels), (batch_size,), generator=g).to(device)
        x = random_crop_flip(images[index].float().div_(255), generator=g)
        yield x.contiguous(memory_format=torch.channels_last), labels[index]


def cosine_lr(step, steps, lr, final_lr=0.0):
    return final_lr + 0.5 * (lr - final_lr) * (1 + torch.cos(torch.tensor(torch.pi * step / max(1, steps))).item())


def count_trainable(parameters) -> int:
    return sum(p.numel() for p in parameters)


def cross_entropy_step(model, optimizer, x, y, autocast):
    with autocast:
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
