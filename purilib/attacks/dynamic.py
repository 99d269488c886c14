"""Input-aware Dynamic backdoor (Nguyen & Tran, "Input-Aware Dynamic Backdoor Attack", NeurIPS 2020;
code: VinAIResearch/input-aware-backdoor-attack-release).  Table names Dyn-one / Dyn-all.

Trigger: a pattern generator G and a mask generator M (encoder-decoders with outputs in (0, 1)) make a
different trigger for every image,
    x' = x + m(x) (G(x) - x),    m(x) = 0.5 + 0.5 tanh(20 M(x) - 10)   (a nearly binary mask).
Preparation (``prepare``): M alone is trained for ``mask_epochs`` on pairs of clean images (x1, x2),
    L_M = lambda_norm mean(relu(m(x1) - mask_density)) + lambda_div mean(d(x1, x2) / (d(m(x1), m(x2)) + 1e-7)),
d the RMS distance: masks cover about ``mask_density`` of the pixels and differ between images.  M is then
frozen.  Training (the attack controls each classifier batch): a share ``poison_rate`` (the paper's p_attack)
of the batch becomes backdoor samples x + m(x)(G(x) - x) with the backdoor label, a share ``p_cross`` becomes
cross-trigger samples x1 + m(x2)(G(x2) - x1), x2 another image of the batch, that keep their true label (so a
trigger only works on the image it was made for), the rest stays clean.  G learns with the classifier:
    L_G = CE(f(backdoor and cross samples)) (their share of the batch) + lambda_div mean(d(x1, x2) / d(G(x1), G(x2))),
the authors' joint loss restricted to the terms that depend on G; Adam (betas 0.5, 0.9), lr ``lr_generator``
times 0.1 at 1/3, 1/2, 2/3 and 5/6 of training (the authors' milestones 200/300/400/500 of 600 epochs).
Mask training: Adam (0.5, 0.9), lr ``lr_mask`` times 0.1 at 10 and 20 of 25 epochs (scaled to ``mask_epochs``).

Defaults (the authors' config.py / train.py; BackdoorBench's inputaware default.yaml agrees): p_attack 0.1,
p_cross 0.1, lambda_div 1, lambda_norm 100, mask_density 0.032, lr_G = lr_M = 0.01, 25 mask epochs, generator
width 32 (stages of 32, 64, 128 channels), batch 128.  All-to-all: y -> y + 1.

Deviations: the second image of each pair comes from the same batch (the batch rolled by a random offset)
instead of a second data loader; the trigger is applied before the fit loop's crop + flip (the authors
augment first); the classifier step uses the project's recipe (the authors: SGD 0.01, 600 epochs); the extra
classifier pass for G's loss leaves the classifier's BatchNorm running statistics untouched; resuming an
interrupted run restarts G's Adam moments; G and M run under the classifier's autocast (bf16 in the cpu
profile).  The cpu profile shrinks ``generator_width`` and ``mask_epochs``.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import fork_rng, generator
from ..augment import random_crop_flip
from .base import Attack, map_chunks


@contextmanager
def frozen_batchnorm_stats(model):
    """Extra forward passes through the classifier being trained (in train mode) without moving its
    BatchNorm running statistics: momentum 0 keeps them as they are."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _conv_block(c_in, c_out, relu=True):
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Generator(nn.Sequential):
    """The authors' encoder-decoder: three (conv, conv, 2x max-pool) stages of width w, 2w, 4w, a middle conv,
    three (2x bilinear upsample, conv, conv) stages back to ``out_channels``; conv = 3x3 conv + BN + ReLU."""

    def __init__(self, width=32, out_channels=3):
        layers, c = [], 3
        for c_next in (width, 2 * width, 4 * width):
            layers += [_conv_block(c, c_next), _conv_block(c_next, c_next), nn.MaxPool2d(2)]
            c = c_next
        layers.append(_conv_block(c, c))
        for c_next in (2 * width, width, out_channels):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear"), _conv_block(c, c),
                       _conv_block(c, c_next, relu=c_next != out_channels)]
            c = c_next
        super().__init__(*layers)

    def forward(self, x):
        return torch.tanh(super().forward(x)) / (2 + 1e-7) + 0.5


def rms_distance(a, b):
    return ((a - b).pow(2).mean(dim=(1, 2, 3)) + 1e-12).sqrt()  # + 1e-12: a finite gradient for identical pairs


def diversity_loss(x1, x2, out1, out2):
    """Small when different images get different outputs: d(x1, x2) / d(out1, out2)."""
    return (rms_distance(x1, x2) / (rms_distance(out1, out2) + 1e-7)).mean()


class InputAwareDynamic(Attack):
    name = "Dynamic"
    controls_training = True
    needs_preparation = True

    def __init__(self, p_cross=0.1, lambda_div=1.0, lambda_norm=100.0, mask_density=0.032, generator_width=32,
                 mask_epochs=25, mask_batch_size=128, lr_generator=0.01, lr_mask=0.01, **kwargs):
        super().__init__(**kwargs)
        self.require_multiple(8, "its generator pools three times")
        if not 0 <= p_cross < 1 or self.poison_rate + p_cross >= 1:
            raise ValueError(f"p_cross must be in [0, 1) with poison_rate + p_cross < 1, not {p_cross}")
        if not 0 < mask_density < 1:
            raise ValueError(f"mask_density must be in (0, 1), not {mask_density}")
        self.p_cross, self.lambda_div, self.lambda_norm = p_cross, lambda_div, lambda_norm
        self.mask_density, self.generator_width = mask_density, generator_width
        self.mask_epochs, self.mask_batch_size = mask_epochs, mask_batch_size
        self.lr_generator, self.lr_mask = lr_generator, lr_mask
        with fork_rng():
            torch.manual_seed(self.seed)  # the networks' initial weights follow the attack's seed
            self.generator = Generator(generator_width, out_channels=3)
            self.mask_generator = Generator(generator_width, out_channels=1)
        self.optimizer = None  # G's Adam, made on first use (after the networks reach their device)
        self._epoch, self._step = -1, 0  # position in training: seeds each batch's randomness

    def config(self):
        return {**super().config(), "p_cross": self.p_cross, "lambda_div": self.lambda_div,
                "lambda_norm": self.lambda_norm, "mask_density": self.mask_density,
                "generator_width": self.generator_width, "mask_epochs": self.mask_epochs,
                "mask_batch_size": self.mask_batch_size, "lr_generator": self.lr_generator, "lr_mask": self.lr_mask}

    # ------------------------------------------------------------------ the trigger
    def pattern(self, x):
        with self.context.autocast():  # bf16 where the classifier trains in bf16 (the cpu profile)
            return self.generator(x).float()

    def mask(self, x):
        with self.context.autocast():
            raw = self.mask_generator(x).float()
        return torch.tanh(20 * raw - 10) / (2 + 1e-7) + 0.5

    def _to_device(self):
        self.generator.to(self.context.device)
        self.mask_generator.to(self.context.device)

    def _triggered(self, x):
        return x + self.mask(x) * (self.pattern(x) - x)

    @torch.no_grad()
    def apply_trigger(self, images):
        self._to_device()
        self.generator.eval()
        self.mask_generator.eval()
        return map_chunks(images, lambda x: 255 * self._triggered(x / 255), self.context.device)

    # ------------------------------------------------------------------ preparation: the mask generator
    def prepare(self, train, context):
        self.context = context
        self._to_device()
        self.mask_generator.train()
        optimizer = torch.optim.Adam(self.mask_generator.parameters(), self.lr_mask, betas=(0.5, 0.9))
        g = generator(self.seed)
        images = train.images
        steps = max(1, len(images) // self.mask_batch_size)
        for epoch in range(self.mask_epochs):
            for group in optimizer.param_groups:  # x0.1 at 10 and 20 of the authors' 25 epochs
                group["lr"] = self.lr_mask * 0.1 ** sum(epoch >= f * self.mask_epochs for f in (0.4, 0.8))
            first, second = torch.randperm(len(images), generator=g, device=g.device), torch.randperm(len(images), generator=g, device=g.device)
            for i in range(steps):
                batch = slice(i * self.mask_batch_size, (i + 1) * self.mask_batch_size)
                x1, x2 = (random_crop_flip(images[order[batch]].to(context.device).float() / 255, generator=g)
                          for order in (first, second))
                m1, m2 = self.mask(x1), self.mask(x2)
                loss = (self.lambda_norm * F.relu(m1 - self.mask_density).mean()
                        + self.lambda_div * diversity_loss(x1, x2, m1, m2))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.mask_generator.eval().requires_grad_(False)

    # ------------------------------------------------------------------ training: backdoor + cross samples, G
    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        self._to_device()
        n = len(labels)
        n_bd, n_cross = int(self.poison_rate * n), int(self.p_cross * n)
        if n < 2 or n_bd + n_cross == 0:
            return images, labels
        self._step = self._step + 1 if epoch == self._epoch else 0
        self._epoch = epoch
        g = generator((self.seed * 1_000_003 + epoch) * 100_003 + self._step)  # resumable
        x = images.float() / 255
        # partner of each image: the batch rolled by a random offset, never the image itself, nor (for the
        # diversity pairs: backdoor image i with the partner of cross position n_bd + i) the backdoor image
        shift = int(torch.randint(1, max(2, n - 1), (1,), generator=g, device=g.device))
        x2 = x.roll(shift + (shift >= n_bd and n > 2), dims=0)
        self.generator.train()
        self.mask_generator.eval()
        clean_bd, clean_cross, partner = x[:n_bd], x[n_bd:n_bd + n_cross], x2[n_bd:n_bd + n_cross]
        with torch.no_grad():
            mask_bd, mask_cross = self.mask(clean_bd), self.mask(partner)
        # one generator pass for both (its BatchNorm then sees both sets, as a batch of 2 x 0.1 x 128 images)
        pattern_bd, pattern_cross = self.pattern(torch.cat([clean_bd, partner])).split([n_bd, n_cross])
        backdoor = clean_bd + mask_bd * (pattern_bd - clean_bd)
        cross = clean_cross + mask_cross * (pattern_cross - clean_cross)
        poisoned_labels = torch.cat([self.target_labels(labels[:n_bd]), labels[n_bd:]])
        if model is not None:
            self._generator_step(model, torch.cat([backdoor, cross]), poisoned_labels[:n_bd + n_cross], n,
                                 (clean_bd, partner, pattern_bd, pattern_cross), epoch, epochs)
        out = torch.cat([backdoor.detach(), cross.detach(), x[n_bd + n_cross:]]) * 255
        return out, poisoned_labels

    def _generator_step(self, model, poisoned, poisoned_labels, batch_size, pair, epoch, epochs):
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.generator.parameters(), self.lr_generator, betas=(0.5, 0.9))
        for group in self.optimizer.param_groups:  # the authors' milestones 200/300/400/500 of 600 epochs
            group["lr"] = self.lr_generator * 0.1 ** sum(epoch >= f * epochs for f in (1 / 3, 1 / 2, 2 / 3, 5 / 6))
        with frozen_batchnorm_stats(model), self.context.autocast():
            logits = model(poisoned)
        # the clean rest of the batch does not depend on G: only these terms of the batch-mean CE
        loss = F.cross_entropy(logits.float(), poisoned_labels, reduction="sum") / batch_size
        k = min(len(pair[0]), len(pair[1]))
        if k > 0 and self.lambda_div > 0:
            first, second, pattern_first, pattern_second = (t[:k] for t in pair)
            loss = loss + self.lambda_div * diversity_loss(first, second, pattern_first, pattern_second)
        params = list(self.generator.parameters())
        for p, grad in zip(params, torch.autograd.grad(loss, params)):  # G's gradients only, not the classifier's
            p.grad = grad
        self.optimizer.step()

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {**{f"generator.{k}": v for k, v in self.generator.state_dict().items()},
                **{f"mask.{k}": v for k, v in self.mask_generator.state_dict().items()}}

    def load_state_dict(self, state):
        for prefix, net in (("generator.", self.generator), ("mask.", self.mask_generator)):
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.mask_generator.eval().requires_grad_(False)
