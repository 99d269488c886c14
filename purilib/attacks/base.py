"""The attack interface every backdoor attack implements.

An attack turns clean uint8 images into triggered ones (``apply_trigger``) and
decides which label a triggered image should get (``target_labels``):
all-to-one sends every image to ``target``; all-to-all sends class y to
(y + 1) mod C.  A data-poisoning attack is fully described by those two, plus
which training images it poisons (``poison_indices``, ``poison_rate`` of the
images that are eligible).  Attacks that control training (WaNet, Input-aware,
LIRA, ...) override ``training_batch`` to change each training batch instead.

Images are square, ``image_size`` pixels a side: 32 (CIFAR-10) by default, 224 for ImageNet.
A trigger that its paper defines in pixels of a 32x32 image keeps its share of the image at other
sizes (``scaled``: a 3x3 patch at 32 is 21x21 at 224) unless its size is given.

Evaluation uses ``triggered_test_set``: test images whose true class is not the
target (all-to-one) or every test image (all-to-all), triggered, with their
true and their backdoor labels.

Attacks that need networks of their own (a trigger optimised on a clean model,
an encoder, a generator) set ``needs_preparation`` and implement ``prepare``:
it runs once on the clean attack-training images, before poisoning, and what
it learns is returned by ``state_dict`` and cached (see ``training.py``), like a
trained model.  Attacks that learn during training (generators trained with the
classifier) keep their state the same way; it is saved beside the model.
"""
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..devices import generator
from ..data import ImageSet


@dataclass
class AttackContext:
    """What an attack may use while it prepares or controls training."""
    device: str = "cpu"
    bf16: bool = False
    clean_model: Callable = None  # () -> a benign model trained with the same recipe (cached)
    progress: bool = True

    def autocast(self):
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16)


class Attack:
    name = "attack"
    controls_training = False  # poisons each training batch itself (``training_batch``)
    needs_preparation = False  # learns something before poisoning (``prepare``)

    def __init__(self, target=0, mode="all2one", poison_rate=0.1, seed=0, num_classes=10, image_size=32):
        if mode not in ("all2one", "all2all"):
            raise ValueError(f"mode must be 'all2one' or 'all2all', not '{mode}'")
        if not 0 < poison_rate <= 1:
            raise ValueError(f"poison_rate must be in (0, 1], not {poison_rate}")
        if not 0 <= target < num_classes:
            raise ValueError(f"target must be a class index in [0, {num_classes}), not {target}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size (pixels per side of the square images) must be an integer >= 8, "
                             f"not {image_size!r}")
        self.target, self.mode, self.poison_rate, self.seed = target, mode, poison_rate, seed
        self.num_classes, self.image_size = num_classes, image_size
        self.context = AttackContext()

    def config(self) -> dict:
        """Everything that defines the attack: part of the trained model's cache key."""
        config = {"name": self.name, "target": self.target, "mode": self.mode,
                  "poison_rate": self.poison_rate, "seed": self.seed}
        # only where they are not CIFAR-10's: the models cached before they were recorded keep their keys
        config.update({} if self.image_size == 32 else {"image_size": self.image_size})
        return config if self.num_classes == 10 else {**config, "num_classes": self.num_classes}

    def require_multiple(self, factor: int, why: str) -> None:
        """Refuse an image size that the attack's own networks cannot take (their poolings halve it)."""
        if self.image_size % factor:
            raise ValueError(f"{self.name} needs an image size divisible by {factor} ({why}), not {self.image_size}")

    def scaled(self, pixels: int) -> int:
        """``pixels`` of a 32x32 image, at this attack's image size (a trigger keeps its share of the image)."""
        return max(1, round(pixels * self.image_size / 32))

    def apply_trigger(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.mode == "all2one":
            return torch.full_like(labels, self.target)
        return (labels + 1) % self.num_classes

    def eligible(self, labels: torch.Tensor) -> torch.Tensor:
        """Images the attack may poison (training) or is scored on (test)."""
        if self.mode == "all2one":
            return (labels != self.target).nonzero().flatten()
        return torch.arange(len(labels), device=labels.device)

    def poison_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """``poison_rate`` of the eligible training images, chosen by ``seed``."""
        eligible = self.eligible(labels)
        g = generator(self.seed)
        count = int(self.poison_rate * len(eligible))
        return eligible[torch.randperm(len(eligible), generator=g, device=g.device)[:count]].sort().values

    def poison_train_set(self, train: ImageSet):
        """Return (poisoned copy of ``train``, indices of the poisoned images).
        An attack that controls training poisons batches on the fly: the set stays clean."""
        if self.controls_training:
            return train, torch.empty(0, dtype=torch.long, device="cpu")
        index = self.poison_indices(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        images[index] = self.trigger_in_chunks(images[index])
        labels[index] = self.target_labels(labels[index])
        return ImageSet(images, labels, train.num_classes), index

    def triggered_test_set(self, test: ImageSet):
        """(triggered images, true labels, backdoor labels) of the eligible test images."""
        index = self.eligible(test.labels)
        true = test.labels[index]
        return self.trigger_in_chunks(test.images[index]), true, self.target_labels(true)

    def trigger_in_chunks(self, images: torch.Tensor, chunk=2048) -> torch.Tensor:
        """``apply_trigger`` a chunk of images at a time: a trigger's float copies of a whole ImageNet test
        set would take tens of GB.  Every trigger is a function of one image, so the result is the same."""
        if len(images) <= chunk:
            return self.apply_trigger(images)
        return torch.cat([self.apply_trigger(part) for part in images.split(chunk)])

    def prepare(self, train: ImageSet, context: AttackContext) -> None:
        """Learn what the trigger needs (``needs_preparation``); ``train`` is clean."""

    def state_dict(self) -> dict:
        """Tensors the attack learned (prepared or trained); cached with the model."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but a state was given")

    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        """Hook for attacks that control training: return the batch to train on (images
        uint8 or float in [0, 255], before crop + flip) and its labels.  It may update the
        attack's own networks (``model``: the classifier being trained).  Data-poisoning
        attacks change nothing here."""
        return images, labels


def ssim(a: torch.Tensor, b: torch.Tensor, window=7, sigma=1.5, same_size=False) -> torch.Tensor:
    """Mean structural similarity of two image batches in [0, 1] (Gaussian window, per channel);
    ``same_size``: zero-pad so every pixel is a window centre (else only full windows count)."""
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, padding=window // 2 if same_size else 0, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))).mean()


def map_chunks(images: torch.Tensor, fn, device, batch_size=256) -> torch.Tensor:
    """Apply ``fn`` (float images in 0..255 units on ``device`` -> the same) to uint8 ``images``, a chunk
    at a time where the attack's networks are; the result is uint8, on the images' own device."""
    out = [fn(b.to(device).float()).round().clamp(0, 255).to(torch.uint8).to(images.device)
           for b in images.split(batch_size)]
    return torch.cat(out) if out else images.clone()


def blend(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """x' = (1 - m) x + m ((1 - alpha) x + alpha p), computed on uint8 images."""
    x = images.float()
    pattern, mask = pattern.to(x.device).float(), mask.to(x.device)
    mixed = (1 - mask) * x + mask * ((1 - alpha) * x + alpha * pattern)
    return mixed.round().clamp(0, 255).to(torch.uint8)
