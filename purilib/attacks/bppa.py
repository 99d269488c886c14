"""BppAttack (Wang, Zhai & Ma, "BppAttack: Stealthy and Efficient Trojan Attacks
against Deep Neural Networks via Image Quantization and Contrastive Adversarial
Learning", CVPR 2022; code: RU-System-Software-and-Security/BppAttack).

Trigger: colour-depth squeezing of every channel to ``squeeze_num`` levels,
    Q(v) = round(v / 255 (L - 1)) 255 / (L - 1),   L = squeeze_num,
with Floyd-Steinberg dithering (pixels in raster order; each pixel's error
v - Q(v) is passed on: 7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right),
so that the image keeps its local mean colour and the trigger stays invisible.
Training is the attack's own: in every batch a fraction ``poison_rate`` is
squeezed and relabelled (all-to-one: target; all-to-all: y + 1), and a further
fraction ``neg_ratio`` becomes negatives that keep their true label, so that
the model learns the exact quantisation rather than any small perturbation:
- ``negatives='residual'`` (the released code and BackdoorBench): the image
  plus the squeezing residual Q(x') - x' of another image x' (here: another
  image of the batch);
- ``negatives='adversarial'`` (our reading of the paper's "contrastive
  adversarial" negatives): targeted PGD on the current model (in eval mode, so
  BatchNorm statistics are untouched) towards the backdoor label,
  ``pgd_steps`` steps of 2.5 eps / steps from a random start, inside an L-inf
  ball eps = 255 / (2 (L - 1)), half a level: the squeezing residual's size.
Defaults: squeeze_num 32 (the authors' CIFAR-10 command line), dithering on
(the paper's trigger; the released code's flag is off by default),
negatives 'residual', poison_rate 0.1 and neg_ratio 0.1 (BackdoorBench; the
released code uses 0.2 / 0.2); pgd_steps 5 (our choice) if adversarial.
The paper trains with a supervised contrastive loss (its authors, GitHub issue
#3 of their repository); their released script and BackdoorBench train with
cross-entropy only, as we do.

Dithering is sequential along a row, but pixel (y, x) depends only on pixels
of smaller x + 2y, so all pixels of one anti-diagonal wavefront x + 2y = t are
done at once (94 steps for 32 x 32 instead of 1024), over the whole batch.
Deviations: quantised levels are clamped to [0, L - 1] (the released code lets
diffused error push a pixel past 255 or below 0); the released code's random
rotation is replaced by the fit loop's crop + flip; poisoned images are the
first ones of each shuffled batch, target-class images included, as there.
Profiles: nothing is expensive with residual negatives; with adversarial ones
``pgd_steps`` is the budget (a forward + backward pass over the negatives each).
The cpu profile uses BackdoorBench's trigger (8 levels, no dithering): the 32
dithered levels are not learned in its 12 epochs (the authors' code trains 1000).
"""
import functools

import torch

from ..devices import generator
from .base import Attack, map_chunks


@functools.lru_cache(maxsize=8)
def _wavefronts(height, width, device="cpu"):
    """Per wavefront x + 2y = t: flat indices (into an image padded by a column each side and a
    row below) of its pixels and of their neighbours right, down-left, down and down-right."""
    padded_width = width + 2
    fronts = []
    for t in range(width + 2 * (height - 1)):
        ys = torch.arange(height, device="cpu")
        xs = t - 2 * ys
        keep = (xs >= 0) & (xs < width)
        ys, xs = ys[keep], xs[keep] + 1  # + 1: the left padding column
        source = ys * padded_width + xs
        right, below = source + 1, source + padded_width
        fronts.append((source.to(device), torch.cat([right, below - 1, below, below + 1]).to(device)))
    return fronts


_WEIGHTS = torch.tensor([7, 3, 5, 1], dtype=torch.float32, device="cpu") / 16


def squeeze(images, levels):
    """Plain colour-depth squeezing of float images in [0, 255]."""
    step = 255 / (levels - 1)
    return (images / step).round().clamp(0, levels - 1) * step


def dither(images, levels):
    """Floyd-Steinberg dithering of float images [N, C, H, W] in [0, 255] to ``levels`` levels."""
    n, c, h, w = images.shape
    canvas = torch.zeros(n * c, (h + 1) * (w + 2), dtype=torch.float32, device=images.device)
    canvas.view(n * c, h + 1, w + 2)[:, :h, 1:w + 1] = images.reshape(n * c, h, w)
    weights = _WEIGHTS.to(images.device)
    for source, neighbours in _wavefronts(h, w, str(images.device)):
        old = canvas[:, source]
        new = squeeze(old, levels)
        canvas[:, source] = new
        # neighbours of two pixels of one wavefront may coincide: accumulate
        canvas.index_add_(1, neighbours, ((old - new)[:, None, :] * weights[None, :, None]).flatten(1))
    return canvas.view(n * c, h + 1, w + 2)[:, :h, 1:w + 1].reshape(n, c, h, w)


class BPPA(Attack):
    name = "BPPA"
    controls_training = True

    def __init__(self, squeeze_num=32, dithering=True, neg_ratio=0.1, negatives="residual", pgd_steps=5,
                 **kwargs):
        super().__init__(**kwargs)
        if not 2 <= squeeze_num <= 255:
            raise ValueError(f"squeeze_num must be in [2, 255], not {squeeze_num}")
        if not 0 <= neg_ratio < 1 or self.poison_rate + neg_ratio > 1:
            raise ValueError(f"neg_ratio must be in [0, 1) with poison_rate + neg_ratio <= 1, not {neg_ratio}")
        if negatives not in ("adversarial", "residual"):
            raise ValueError(f"negatives must be 'adversarial' or 'residual', not '{negatives}'")
        if pgd_steps < 1:
            raise ValueError(f"pgd_steps must be at least 1, not {pgd_steps}")
        self.squeeze_num, self.dithering, self.neg_ratio = squeeze_num, bool(dithering), float(neg_ratio)
        self.negatives, self.pgd_steps = negatives, pgd_steps
        self.generator = generator(self.seed)

    def config(self):
        return {**super().config(), "squeeze_num": self.squeeze_num, "dithering": self.dithering,
                "neg_ratio": self.neg_ratio, "negatives": self.negatives, "pgd_steps": self.pgd_steps}

    def _squeeze(self, x):
        """Float [0, 255] in, quantised (and dithered) float out."""
        return dither(x, self.squeeze_num) if self.dithering else squeeze(x, self.squeeze_num)

    def apply_trigger(self, images, batch_size=2048):
        return map_chunks(images, self._squeeze, self.context.device, batch_size)

    def _adversarial(self, model, x, labels):
        """Targeted L-inf PGD towards the backdoor label (images in [0, 255]), model in eval mode."""
        eps = 255 / (2 * (self.squeeze_num - 1))
        step = 2.5 * eps / self.pgd_steps
        goal = self.target_labels(labels)
        was_training = model.training
        model.eval()
        delta = (torch.rand(x.shape, generator=self.generator, device=self.generator.device) * 2 - 1).to(x.device) * eps
        for _ in range(self.pgd_steps):
            delta.requires_grad_(True)
            with self.context.autocast():
                logits = model(((x + delta).clamp(0, 255) / 255).contiguous(memory_format=torch.channels_last))
            loss = torch.nn.functional.cross_entropy(logits.float(), goal)
            grad, = torch.autograd.grad(loss, delta)  # inputs only: no parameter gradients accumulate
            delta = (delta.detach() - step * grad.sign()).clamp(-eps, eps)
        model.train(was_training)
        return (x + delta).clamp(0, 255).detach()

    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        n = len(labels)
        num_bd, num_neg = int(n * self.poison_rate), int(n * self.neg_ratio)
        x = images.float()
        poisoned = self._squeeze(x[:num_bd])
        negatives = x[num_bd:num_bd + num_neg]
        if num_neg and self.negatives == "adversarial":
            if model is None:
                raise ValueError("adversarial negatives need the model being trained")
            negatives = self._adversarial(model, negatives, labels[num_bd:num_bd + num_neg])
        elif num_neg:
            # another image's residual: never the image's own (that would be the trigger, labelled clean)
            offset = torch.randint(1, n, (num_neg,), generator=self.generator, device=self.generator.device)
            donors = x[((torch.arange(num_bd, num_bd + num_neg, device=offset.device) + offset) % n).to(x.device)]
            negatives = (negatives + self._squeeze(donors) - donors).clamp(0, 255)
        x = torch.cat([poisoned, negatives, x[num_bd + num_neg:]])
        y = torch.cat([self.target_labels(labels[:num_bd]), labels[num_bd:]])
        return x, y
