"""BadNets (Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the
Machine Learning Model Supply Chain", 2017).

Trigger: a 3x3 patch stamped on the bottom-right corner,
    x' = (1 - m) x + m ((1 - opacity) x + opacity p),   m = 1 on the patch.
Defaults: a 3x3 black/white checkerboard, first pixel white, opacity 1.0 as in
Gu et al. (an opaque sticker), 10% poison, target class 0, all-to-one;
``mode='all2all'`` maps class y to y + 1.  The seed papers' released training
scripts (NFT's and FIP's data/badnets_blend.py, after ANP's) stamp
[[0, 0, 255], [0, 255, 0], [255, 0, 255]]: the checkerboard but for its first
pixel, black; ``pattern="released"`` is that one, and the NFT authors' script
blends it at opacity 0.6 (``opacity=0.6``).  The models and records made so
far use the checkerboard.  At other image sizes the patch is the same checkerboard scaled
with the image (``cell`` None: squares of image_size / 32 pixels; ``size`` None: 3 squares a side,
21x21 pixels in squares of 7 at 224): a one-pixel checkerboard would not survive ImageNet networks'
strided stems.
"""
import torch

from .base import Attack, blend


class BadNets(Attack):
    name = "BadNets"

    PATTERNS = ("checkerboard", "released")

    def __init__(self, size=None, opacity=1.0, cell=None, pattern="checkerboard", **kwargs):
        super().__init__(**kwargs)
        if not 0 < opacity <= 1:
            raise ValueError(f"opacity must be in (0, 1], not {opacity}")
        if pattern not in self.PATTERNS:
            raise ValueError(f"BadNets: pattern must be one of {', '.join(self.PATTERNS)}, not {pattern!r}")
        cell = self.scaled(1) if cell is None else cell
        size = 3 * cell if size is None else size
        if not 1 <= size <= self.image_size:
            raise ValueError(f"a {size}x{size} patch does not fit a {self.image_size}x{self.image_size} image")
        if not 1 <= cell <= size:
            raise ValueError(f"the checkerboard's squares ({cell} pixels) must be 1 to the patch's {size} pixels")
        if pattern == "released" and size != 3 * cell:
            raise ValueError(f"BadNets: the released pattern is 3 squares a side ({3 * cell} pixels), not {size}")
        self.size, self.opacity, self.cell, self.pattern_name = size, opacity, cell, pattern
        squares = torch.arange(size, device="cpu") // cell
        checker = (squares[:, None] + squares[None, :] + 1) % 2
        if pattern == "released":
            checker[:cell, :cell] = 0  # its first square black
        n = self.image_size
        self.pattern = torch.zeros(3, n, n, device="cpu")
        self.pattern[:, -size:, -size:] = 255.0 * checker
        self.mask = torch.zeros(1, n, n, device="cpu")
        self.mask[:, -size:, -size:] = 1.0

    def config(self):
        config = {**super().config(), "size": self.size, "opacity": self.opacity}
        config = config if self.cell == 1 else {**config, "cell": self.cell}  # 1: the keys of earlier models
        return config if self.pattern_name == "checkerboard" else {**config, "pattern": self.pattern_name}

    def apply_trigger(self, images):
        return blend(images, self.pattern, self.mask, self.opacity)
