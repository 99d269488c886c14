"""Blend (Chen, Liu, Li, Lu & Song, "Targeted Backdoor Attacks on Deep Learning
Systems Using Data Poisoning", 2017).

Trigger: the whole image blended with a fixed pattern,
    x' = (1 - alpha) x + alpha p,   alpha = 0.2.
Chen et al. blend either a cartoon image or random noise; the seed papers'
released scripts use a fixed noise image.  We generate that noise from a fixed
seed (``pattern_seed``) so nothing is downloaded: uniform uint8 noise, 3 x image_size x image_size.
Defaults: alpha 0.2, 10% poison, target 0, all-to-one.
"""
import torch

from ..devices import generator
from .base import Attack, blend


class Blend(Attack):
    name = "Blend"

    def __init__(self, alpha=0.2, pattern_seed=0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {alpha}")
        self.alpha, self.pattern_seed = alpha, pattern_seed
        g = generator(pattern_seed)
        n = self.image_size
        self.pattern = torch.randint(0, 256, (3, n, n), generator=g, device=g.device).float()
        self.mask = torch.ones(1, n, n, device="cpu")

    def config(self):
        return {**super().config(), "alpha": self.alpha, "pattern_seed": self.pattern_seed}

    def apply_trigger(self, images):
        return blend(images, self.pattern, self.mask, self.alpha)
