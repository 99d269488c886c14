"""The attack interface every backdoor attack implements.

An attack turns clean uint8 images into triggered ones (``apply_trigger``) and
decides which label a triggered image should get (``target_labels``):
all-to-one sends every image to ``target``; all-to-all sends class y to
(y + 1) mod C.  A data-poisoning attack is fully described by those two, plus
which training images it poisons (``poison_indices``, ``poison_rate`` of the
images that are eligible).  Attacks that control training (WaNet, Input-aware,
LIRA, ...) override ``training_batch`` to change each training batch instead.

Evaluation uses ``triggered_test_set``: test images whose true class is not the
target (all-to-one) or every test image (all-to-all), triggered, with their
true and their backdoor labels.
"""
import torch

from ..data import ImageSet


class Attack:
    name = "attack"
    controls_training = False

    def __init__(self, target=0, mode="all2one", poison_rate=0.1, seed=0, num_classes=10):
        if mode not in ("all2one", "all2all"):
            raise ValueError(f"mode must be 'all2one' or 'all2all', not '{mode}'")
        if not 0 < poison_rate <= 1:
            raise ValueError(f"poison_rate must be in (0, 1], not {poison_rate}")
        if not 0 <= target < num_classes:
            raise ValueError(f"target must be a class index in [0, {num_classes}), not {target}")
        self.target, self.mode, self.poison_rate, self.seed = target, mode, poison_rate, seed
        self.num_classes = num_classes

    def config(self) -> dict:
        """Everything that defines the attack: part of the trained model's cache key."""
        return {"name": self.name, "target": self.target, "mode": self.mode,
                "poison_rate": self.poison_rate, "seed": self.seed}

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
        return torch.arange(len(labels))

    def poison_indices(self, labels: torch.Tensor) -> torch.Tensor:
        """``poison_rate`` of the eligible training images, chosen by ``seed``."""
        eligible = self.eligible(labels)
        g = torch.Generator().manual_seed(self.seed)
        count = int(self.poison_rate * len(eligible))
        return eligible[torch.randperm(len(eligible), generator=g)[:count]].sort().values

    def poison_train_set(self, train: ImageSet):
        """Return (poisoned copy of ``train``, indices of the poisoned images)."""
        index = self.poison_indices(train.labels)
        images, labels = train.images.clone(), train.labels.clone()
        images[index] = self.apply_trigger(images[index])
        labels[index] = self.target_labels(labels[index])
        return ImageSet(images, labels, train.num_classes), index

    def triggered_test_set(self, test: ImageSet):
        """(triggered images, true labels, backdoor labels) of the eligible test images."""
        index = self.eligible(test.labels)
        true = test.labels[index]
        return self.apply_trigger(test.images[index]), true, self.target_labels(true)

    def training_batch(self, images, labels, model=None):
        """Hook for attacks that control training; data-poisoning attacks change nothing here."""
        return images, labels


def blend(images: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """x' = (1 - m) x + m ((1 - alpha) x + alpha p), computed on uint8 images."""
    x = images.float()
    mixed = (1 - mask) * x + mask * ((1 - alpha) * x + alpha * pattern.float())
    return mixed.round().clamp(0, 255).to(torch.uint8)
