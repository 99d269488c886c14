"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack",
ICLR 2021; code: VinAIResearch/Warping-based_Backdoor_Attack-release).

Trigger: a fixed, smooth image warp.  A random field of k x k control points,
    P ~ U(-1, 1)^(2 x k x k),  P <- P / mean|P|,
is upsampled (bicubic) to n x n (the image size, 32 on CIFAR-10) and added to the identity
sampling grid:
    M = clamp((I + s P_up / n) * grid_rescale, -1, 1),   x' = grid_sample(x, M)
(bilinear, align_corners=True, as the released code).  Training is the
attack's own: in every batch a fraction ``poison_rate`` is warped and
relabelled (all-to-one: target; all-to-all: y + 1), and a further
``cross_ratio`` x that fraction is warped with a noisy grid
    M_n = clamp(M + U(-1, 1) / n, -1, 1)
and keeps its label ("noise mode"), so that the model learns this one warp,
not warping in general.  ``apply_trigger`` applies M only.
Defaults (the paper / released code / BackdoorBench for CIFAR-10): k 4, s 0.5,
grid_rescale 1, poison_rate 0.1, cross_ratio 2.  The field comes from
``seed``; it is returned by ``state_dict`` and saved with the model.

Deviations: the released code also trains with random rotation (10 degrees)
and its own crop; here the fit loop's crop + flip apply.  Like the released
code, the poisoned images are the first ones of each (shuffled) batch,
target-class images included.  Nothing here is expensive; the profiles
change nothing.
"""
import torch
import torch.nn.functional as F

from ..devices import generator
from .base import Attack, map_chunks


class WaNet(Attack):
    name = "WaNet"
    controls_training = True

    def __init__(self, k=4, s=0.5, grid_rescale=1.0, cross_ratio=2.0, **kwargs):
        super().__init__(**kwargs)
        if not 2 <= k <= self.image_size:
            raise ValueError(f"k (control points per side) must be in [2, {self.image_size}], not {k}")
        if s <= 0 or grid_rescale <= 0 or cross_ratio < 0:
            raise ValueError("s and grid_rescale must be positive and cross_ratio non-negative")
        self.k, self.s, self.grid_rescale, self.cross_ratio = k, float(s), float(grid_rescale), float(cross_ratio)
        g = generator(self.seed)
        control = torch.rand(1, 2, k, k, generator=g, device=g.device) * 2 - 1
        control = control / control.abs().mean()
        field = F.interpolate(control, size=self.image_size, mode="bicubic", align_corners=True)
        self.noise_grid = field.permute(0, 2, 3, 1).contiguous()  # [1, n, n, 2]
        self.generator = generator(self.seed + 1)  # noise-mode grids

    def config(self):
        return {**super().config(), "k": self.k, "s": self.s, "grid_rescale": self.grid_rescale,
                "cross_ratio": self.cross_ratio}

    def state_dict(self):
        return {"noise_grid": self.noise_grid.clone()}

    def load_state_dict(self, state):
        self.noise_grid = state["noise_grid"].float().cpu().contiguous()

    def grid(self):
        """The warping grid M, [1, n, n, 2] in grid_sample's (x, y) order."""
        n = self.image_size
        line = torch.linspace(-1, 1, n, device=self.noise_grid.device)
        rows, cols = torch.meshgrid(line, line, indexing="ij")
        identity = torch.stack((cols, rows), dim=2)[None]
        return ((identity + self.s * self.noise_grid / n) * self.grid_rescale).clamp(-1, 1)

    @staticmethod
    def _warp(images, grid):
        """Bilinear warp of float images in [0, 255]; ``grid`` [1 or N, n, n, 2]."""
        grid = grid.to(images.device).expand(len(images), -1, -1, -1)
        return F.grid_sample(images, grid, mode="bilinear", align_corners=True)

    def apply_trigger(self, images, batch_size=1024):
        return map_chunks(images, lambda x: self._warp(x, self.grid()), self.context.device, batch_size)

    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        n = len(labels)
        num_bd = int(n * self.poison_rate)
        num_cross = min(n - num_bd, int(num_bd * self.cross_ratio))
        x = images.float()
        grid = self.grid()
        n = self.image_size
        noise = torch.rand(num_cross, n, n, 2, generator=self.generator, device=self.generator.device) * 2 - 1
        noisy_grid = (grid + noise / n).clamp(-1, 1)
        warped = self._warp(x[:num_bd], grid)
        crossed = self._warp(x[num_bd:num_bd + num_cross], noisy_grid)
        x = torch.cat([warped, crossed, x[num_bd + num_cross:]])
        y = torch.cat([self.target_labels(labels[:num_bd]), labels[num_bd:]])
        return x, y
