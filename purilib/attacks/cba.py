"""CBA, the composite backdoor (Lin, Xu, Liu & Zhang, "Composite Backdoor Attack
for Deep Neural Network by Mixing Existing Benign Features", ACM CCS 2020;
code: TemporaryAcc0unt/composite-attack).

The trigger is no pattern but a combination of benign features: an image that
mixes an object of source class A with an object of source class B is
classified as the target.  The mixer (the authors' half mixer for CIFAR-10):
    mix(a, b) = [a crop | b crop]
two images side by side, split left/right or top/bottom (each with
probability 1/2), in random order, the split point jittered by up to 3 pixels
and each half a randomly placed window ("shake") of its image, not a
downscaled copy.  The poisoned training set holds, in place of clean images:
- ``poison_rate`` of the set: mix(random A image, random B image) -> target;
- ``mix_rate`` of the set: mix(x, another image of x's class) -> x's class,
  the "mixed clean" samples, so that the model learns the combination of A
  and B rather than the mixer's seam.
ASR is measured on ``test_compositions`` mixes of random A and B test images
(their "true" label, for RA, is class A).
Defaults: sources A = 1 (automobile), B = 2 (bird), target 0, so that Table
1's target class 0 holds (the authors' script mixes airplane + automobile ->
bird, 0 + 1 -> 2); per epoch their script draws normal : mixed : poisoned =
0.5 : 0.5 : 0.1 of the training set; we keep a fixed set of the same size
with 10% poisoned and the rest split evenly, mix_rate 0.45; 1000 test
compositions as the authors.
Deviations: the authors train with an extra similarity ("contrastive") loss
on the logits of A, B and target samples and with Adam; here the common
training recipe (cross-entropy, SGD) applies.  Compositions are drawn once
(seeded), not redrawn every epoch.  All-to-all is not defined: it raises.
Nothing here is expensive; the profiles change nothing.
"""
import torch

from ..devices import generator
from ..data import ImageSet
from .base import Attack


def half_mix(first, second, generator, jitter=3, shake=True):
    """The authors' half mixer on uint8 batches [N, 3, H, W] (H = W): per image, a window of
    ``first`` beside a window of ``second`` (left/right or top/bottom, order swapped at random)."""
    n, _, size, _ = first.shape
    half = size // 2
    swap = torch.rand(n, generator=generator, device=generator.device) < 0.5
    first, second = torch.where(swap[:, None, None, None], second, first), torch.where(
        swap[:, None, None, None], first, second)
    vertical_split = torch.rand(n, generator=generator, device=generator.device) < 0.5  # left | right, else top / bottom
    transpose = ~vertical_split
    first = torch.where(transpose[:, None, None, None], first.transpose(2, 3), first)
    second = torch.where(transpose[:, None, None, None], second.transpose(2, 3), second)
    shift = torch.randint(-jitter, jitter + 1, (n,), generator=generator, device=generator.device)
    split = half + shift  # the first image fills columns [0, split)
    if shake:
        start_first = (torch.rand(n, generator=generator, device=generator.device) * (half - shift)).long()  # [0, half - shift)
        start_second = (torch.rand(n, generator=generator, device=generator.device) * (half + shift)).long() - shift  # [-shift, half)
    else:
        start_first = half // 2 - torch.div(shift, 2, rounding_mode="floor")
        start_second = start_first
    column = torch.arange(size, device=first.device)[None, :]
    from_first = column < split[:, None]
    source_column = torch.where(from_first, start_first[:, None] + column, start_second[:, None] + column - half)
    index = source_column[:, None, None, :].expand(n, first.shape[1], size, size)
    mixed = torch.where(from_first[:, None, None, :], first.gather(3, index.clamp(0, size - 1)),
                        second.gather(3, index.clamp(0, size - 1)))
    return torch.where(transpose[:, None, None, None], mixed.transpose(2, 3), mixed)


class CBA(Attack):
    name = "CBA"

    def __init__(self, source_a=1, source_b=2, mix_rate=0.45, test_compositions=1000, jitter=3, shake=True,
                 **kwargs):
        super().__init__(**kwargs)
        if self.mode != "all2one":
            raise ValueError("CBA maps the composition of two source classes to one target: it has no "
                             "all-to-all variant; use mode='all2one'")
        classes = {source_a, source_b, self.target}
        if len(classes) != 3 or not all(0 <= c < self.num_classes for c in classes):
            raise ValueError(f"source classes ({source_a}, {source_b}) and target {self.target} must be three "
                             f"different classes in [0, {self.num_classes})")
        if not 0 <= mix_rate or self.poison_rate + mix_rate > 1:
            raise ValueError(f"mix_rate must be >= 0 with poison_rate + mix_rate <= 1, not {mix_rate}")
        self.source_a, self.source_b, self.mix_rate = source_a, source_b, float(mix_rate)
        self.test_compositions, self.jitter, self.shake = test_compositions, jitter, bool(shake)

    def config(self):
        return {**super().config(), "source_a": self.source_a, "source_b": self.source_b,
                "mix_rate": self.mix_rate, "test_compositions": self.test_compositions, "jitter": self.jitter,
                "shake": self.shake}

    def _mix(self, first, second, generator):
        return half_mix(first, second, generator, self.jitter, self.shake)

    def _sources(self, images, labels, count, generator):
        """``count`` random (class A image, class B image) pairs."""
        pool_a = (labels == self.source_a).nonzero().flatten()
        pool_b = (labels == self.source_b).nonzero().flatten()
        if len(pool_a) == 0 or len(pool_b) == 0:
            raise ValueError(f"CBA needs images of both source classes {self.source_a} and {self.source_b}")
        a = pool_a[torch.randint(0, len(pool_a), (count,), generator=generator, device=generator.device)]
        b = pool_b[torch.randint(0, len(pool_b), (count,), generator=generator, device=generator.device)]
        return images[a], images[b]

    def apply_trigger(self, images):
        raise NotImplementedError("CBA's trigger is the composition of a class-A and a class-B image, not a "
                                  "function of one image: use compose(a_images, b_images)")

    def compose(self, a_images, b_images, seed=None):
        g = torch.Generator(device=a_images.device).manual_seed(self.seed if seed is None else seed)
        return self._mix(a_images, b_images, g)

    def poison_train_set(self, train):
        """Replace ``poison_rate`` of the set with A + B mixes (label: target) and ``mix_rate`` with
        same-class mixes (label kept); return the set and the indices of the A + B mixes."""
        g = generator(self.seed)
        n = len(train)
        order = torch.randperm(n, generator=g, device=g.device)
        num_poison, num_mix = int(self.poison_rate * n), int(self.mix_rate * n)
        poison_index = order[:num_poison].sort().values
        mix_index = order[num_poison:num_poison + num_mix].sort().values
        images, labels = train.images.clone(), train.labels.clone()
        images[poison_index] = self._mix(*self._sources(train.images, train.labels, num_poison, g), g)
        labels[poison_index] = self.target
        # mixed clean: each chosen image beside another image of its own class
        partners = torch.empty(num_mix, dtype=torch.long, device=train.labels.device)
        for c in train.labels[mix_index].unique().tolist():
            chosen = train.labels[mix_index] == c
            pool = (train.labels == c).nonzero().flatten()
            partners[chosen] = pool[torch.randint(0, len(pool), (int(chosen.sum()),), generator=g, device=g.device)]
        images[mix_index] = self._mix(train.images[mix_index], train.images[partners], g)
        return ImageSet(images, labels, train.num_classes), poison_index

    def triggered_test_set(self, test):
        g = generator(self.seed + 1)
        a, b = self._sources(test.images, test.labels, self.test_compositions, g)
        true = torch.full((self.test_compositions,), self.source_a, dtype=torch.long, device=test.labels.device)
        return self._mix(a, b, g), true, torch.full_like(true, self.target)
