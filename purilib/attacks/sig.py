"""SIG (Barni, Kallas & Tondi, "A New Backdoor Attack in CNNs by Training Set
Corruption Without Label Poisoning", ICIP 2019).

Clean-label: a horizontal sinusoid is added to training images of the target
class only, whose labels stay correct; at test time it is added to images of
the other classes, which the model then assigns to the target class:
    v(i, j) = delta * sin(2 pi j f / m),   x' = clip(x + v, 0, 255),
j the column, m the image width (32 on CIFAR-10), the same v on every row and channel.
Defaults: delta 20, f 6, as in Barni et al.'s sinusoidal signal.  BackdoorBench
uses delta 40 (pass ``delta=40``).

Poison rate, as BackdoorBench defines it for clean-label attacks: the number of
poisoned images is ``poison_rate`` times the whole training set, all drawn from
the target class (capped at the size of that class).  At 10% on CIFAR-10 that
is every target-class image.

The seed papers' released scripts (NAD's data loader, reused by NFT) do
something else under "SIG at 0.2": 0.2 is a blending weight, x' = 0.8 x + 0.2 s,
with s a stored 32x32 sinusoid of amplitude 20 (about four periods across the
width) saved as uint8, so that its negative half-periods wrapped round to
236..255; and they poison 10% of the target class.  The wrap-round is a bug
(it turns the sinusoid into bright stripes and dims the image by 20%); we
implement the paper's additive signal.

All-to-all is not defined for a clean-label attack: ``mode='all2all'`` raises.
Nothing here is expensive; the profiles change nothing.
"""
import math

import torch

from ..devices import generator
from .base import Attack


class SIG(Attack):
    name = "SIG"

    def __init__(self, delta=20.0, frequency=6.0, **kwargs):
        super().__init__(**kwargs)
        if self.mode != "all2one":
            raise ValueError("SIG is a clean-label attack: it poisons target-class images only, so it has no "
                             "all-to-all variant; use mode='all2one'")
        if delta <= 0:
            raise ValueError(f"delta must be positive, not {delta}")
        self.delta, self.frequency = float(delta), float(frequency)
        n = self.image_size
        columns = torch.arange(n, dtype=torch.float32, device="cpu")
        self.signal = (self.delta * torch.sin(2 * math.pi * columns * self.frequency / n)).expand(1, n, n)

    def config(self):
        return {**super().config(), "delta": self.delta, "frequency": self.frequency}

    def apply_trigger(self, images):
        return (images.float() + self.signal.to(images.device)).round().clamp(0, 255).to(torch.uint8)

    def poison_indices(self, labels):
        """``poison_rate`` x len(labels) images of the target class, chosen by ``seed``."""
        candidates = (labels == self.target).nonzero().flatten()
        count = min(len(candidates), round(self.poison_rate * len(labels)))
        g = generator(self.seed)
        # relabelling them with the target (the default ``poison_train_set``) changes no label
        return candidates[torch.randperm(len(candidates), generator=g, device=g.device)[:count]].sort().values
