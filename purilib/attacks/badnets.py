"""BadNets (Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the
Machine Learning Model Supply Chain", 2017).

Trigger: a 3x3 patch stamped on the bottom-right corner,
    x' = (1 - m) x + m ((1 - opacity) x + opacity p),   m = 1 on the patch.
Defaults: the 3x3 black/white checkerboard of the seed papers' released
training scripts (first pixel white), opacity 1.0 as in Gu et al. (an opaque
sticker), 10% poison, target class 0, all-to-one; ``mode='all2all'`` maps
class y to y + 1.  The NFT authors' script blends the patch at opacity 0.6;
pass ``opacity=0.6`` to match it.
"""
import torch

from .base import Attack, blend


class BadNets(Attack):
    name = "BadNets"

    def __init__(self, size=3, opacity=1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 < opacity <= 1:
            raise ValueError(f"opacity must be in (0, 1], not {opacity}")
        self.size, self.opacity = size, opacity
        checker = (torch.arange(size, device="cpu")[:, None] + torch.arange(size, device="cpu")[None, :] + 1) % 2
        self.pattern = torch.zeros(3, 32, 32, device="cpu")
        self.pattern[:, -size:, -size:] = 255.0 * checker
        self.mask = torch.zeros(1, 32, 32, device="cpu")
        self.mask[:, -size:, -size:] = 1.0

    def config(self):
        return {**super().config(), "size": self.size, "opacity": self.opacity}

    def apply_trigger(self, images):
        return blend(images, self.pattern, self.mask, self.opacity)
