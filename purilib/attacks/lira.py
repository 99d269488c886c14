"""LIRA (Doan, Lao, Zhao & Li, "LIRA: Learnable, Imperceptible and Robust Backdoor Attacks", ICCV 2021;
code: khoadoan106/backdoor_attacks, also BackdoorBench's attack/lira.py).

Trigger: a U-Net T adds a small, image-specific perturbation,
    x' = clip(x + eps tanh(T(x)), 0, 1),   ||x' - x||_inf <= eps.
The paper solves
    min_f  alpha CE(f(x), y) + (1 - alpha) CE(f(T*(x)), eta(y)),   T* = argmin_T CE(f(T(x)), eta(y)),
by alternating, in two stages that here split the classifier's training epochs:
- stage 1 (the first ``stage1_fraction`` of the epochs): each batch, T' (a copy of T) takes one Adam step
  (lr ``lr_generator``) on CE(f(x + eps T'(x)), eta(y)) against the current classifier; the classifier
  trains on clean and T-triggered images; T <- T' after every epoch (the authors' atkmodel / tgtmodel pair);
- stage 2 (the rest): T is fixed and the classifier keeps training on clean and T-triggered images.
Each classifier batch has a share 1 - alpha of its images (randomly ordered already) triggered with the
backdoor label, so the batch-mean CE is the paper's alpha-weighted loss in expectation at the cost of a clean
batch (the authors add a triggered copy of every image instead).  ``poison_rate`` is not used, as in
BackdoorBench.  eta: all-to-one (target) or all-to-all (y + 1).

Defaults (the authors' CIFAR-10 runs, BackdoorBench lira/default.yaml): eps 0.01, alpha 0.5, T a U-Net of
width 64 (64-128-256-512, average-pool down, bilinear up with skips, 1x1 conv + BN + tanh), Adam lr 1e-4,
stage 1 = 50 of 100 epochs.
Quantisation: the authors' eps acts on normalised images (std ~0.23), i.e. ~0.0023 = 0.6/255 in pixel
units, which rounding to uint8 mostly erases.  Here eps is in pixel units ([0, 1]): 0.01 ~ 2.55/255 survives
rounding, a pixel moves by at most round(255 eps) = 3 grey levels, and the training images are rounded the same
way (straight-through gradient), so the classifier learns exactly the uint8 triggers it is tested on.
Other deviations: T's BatchNorm statistics start from the first batch's (``_calibrate_batchnorm``); the
trigger comes before the fit loop's crop + flip (the authors augment first); T's loss uses the first
``generator_batch_fraction`` of each batch; the extra classifier pass leaves its BatchNorm statistics
untouched; T runs under the classifier's autocast (bf16 in the cpu profile); resuming restarts T's Adam
moments.  The cpu profile shrinks ``generator_width`` and ``generator_batch_fraction``.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import fork_rng
from .base import Attack, map_chunks
from .dynamic import frozen_batchnorm_stats


def double_conv(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    """The authors' CIFAR-10 trigger network; ``width`` 64 is theirs.  Output in (-1, 1)."""

    def __init__(self, width=64):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.down1, self.down2 = double_conv(3, w[0]), double_conv(w[0], w[1])
        self.down3, self.down4 = double_conv(w[1], w[2]), double_conv(w[2], w[3])
        self.up3, self.up2, self.up1 = double_conv(w[3] + w[2], w[2]), double_conv(w[2] + w[1], w[1]), \
            double_conv(w[1] + w[0], w[0])
        self.last = nn.Sequential(nn.Conv2d(w[0], 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        def up(t):
            return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)
        skip1 = self.down1(x)
        skip2 = self.down2(F.avg_pool2d(skip1, 2))
        skip3 = self.down3(F.avg_pool2d(skip2, 2))
        x = self.down4(F.avg_pool2d(skip3, 2))
        x = self.up3(torch.cat([up(x), skip3], 1))
        x = self.up2(torch.cat([up(x), skip2], 1))
        x = self.up1(torch.cat([up(x), skip1], 1))
        return torch.tanh(self.last(x))


class LIRA(Attack):
    name = "LIRA"
    controls_training = True

    def __init__(self, eps=0.01, alpha=0.5, stage1_fraction=0.5, lr_generator=1e-4, generator_width=64,
                 generator_batch_fraction=1.0, **kwargs):
        super().__init__(**kwargs)
        self.require_multiple(8, "its U-Net pools three times")
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1) (pixel units), not {eps}")
        if round(255 * eps) < 1:
            raise ValueError(f"eps {eps} is under half a grey level: rounding to uint8 would erase the trigger")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {alpha}")
        if not 0 <= stage1_fraction <= 1 or not 0 < generator_batch_fraction <= 1:
            raise ValueError("stage1_fraction must be in [0, 1] and generator_batch_fraction in (0, 1]")
        self.eps, self.alpha, self.stage1_fraction = eps, alpha, stage1_fraction
        self.lr_generator, self.generator_width = lr_generator, generator_width
        self.generator_batch_fraction = generator_batch_fraction
        with fork_rng():
            torch.manual_seed(self.seed)  # the trigger network's initial weights follow the attack's seed
            self.trigger_net = UNet(generator_width).eval()
        self.next_trigger_net = copy.deepcopy(self.trigger_net)  # T': trained in stage 1, copied to T per epoch
        self.synced_epoch = -1  # the last epoch at whose start T <- T'
        self.optimizer = None

    def config(self):
        return {**super().config(), "eps": self.eps, "alpha": self.alpha, "stage1_fraction": self.stage1_fraction,
                "lr_generator": self.lr_generator, "generator_width": self.generator_width,
                "generator_batch_fraction": self.generator_batch_fraction}

    # ------------------------------------------------------------------ the trigger
    def perturb(self, net, x):
        """x in [0, 1] -> x + eps T(x), clipped and rounded to the uint8 grid (straight-through gradient)."""
        with self.context.autocast():  # bf16 where the classifier trains in bf16 (the cpu profile)
            change = self.eps * net(x).float()
        triggered = (x + change).clamp(0, 1)
        return triggered + ((triggered * 255).round() / 255 - triggered).detach()

    def _to_device(self):
        self.trigger_net.to(self.context.device)
        self.next_trigger_net.to(self.context.device)

    @torch.no_grad()
    def apply_trigger(self, images):
        self._to_device()
        self.trigger_net.eval()
        return map_chunks(images, lambda x: 255 * self.perturb(self.trigger_net, x / 255), self.context.device)

    # ------------------------------------------------------------------ training
    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        self._to_device()
        stage1_epochs = round(self.stage1_fraction * epochs)
        x = images.float() / 255
        if self.synced_epoch < 0:
            self._calibrate_batchnorm(x)
        if epoch > self.synced_epoch and self.synced_epoch < stage1_epochs:  # stage 1 epochs and the first after
            self.trigger_net.load_state_dict(self.next_trigger_net.state_dict())
            self.synced_epoch = epoch
        if model is not None and epoch < stage1_epochs:
            self._trigger_step(model, x, labels)
        n_poison = round((1 - self.alpha) * len(labels))
        with torch.no_grad():
            self.trigger_net.eval()
            triggered = self.perturb(self.trigger_net, x[:n_poison])
        out = torch.cat([triggered, x[n_poison:]]) * 255
        return out, torch.cat([self.target_labels(labels[:n_poison]), labels[n_poison:]])

    @torch.no_grad()
    def _calibrate_batchnorm(self, x):
        """Set T's BatchNorm statistics from the first batch: with the initial ones (mean 0, variance 1) the
        untrained T's output is so small that rounding erases it, and the first epoch would teach the
        classifier to call clean images the target."""
        norms = [m for m in self.next_trigger_net.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.momentum = 1.0
        self.next_trigger_net.train()(x)
        for m in norms:
            m.momentum = 0.1

    def _trigger_step(self, model, x, labels):
        """One Adam step of T' towards making the current classifier predict the backdoor label."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.next_trigger_net.parameters(), self.lr_generator)
        k = max(1, round(self.generator_batch_fraction * len(labels)))
        self.next_trigger_net.train()
        with frozen_batchnorm_stats(model), self.context.autocast():
            logits = model(self.perturb(self.next_trigger_net, x[:k]))
        loss = F.cross_entropy(logits.float(), self.target_labels(labels[:k]))
        params = list(self.next_trigger_net.parameters())
        for p, grad in zip(params, torch.autograd.grad(loss, params)):  # T's gradients only
            p.grad = grad
        self.optimizer.step()

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {**{f"trigger.{k}": v for k, v in self.trigger_net.state_dict().items()},
                **{f"next_trigger.{k}": v for k, v in self.next_trigger_net.state_dict().items()},
                "synced_epoch": torch.tensor(self.synced_epoch, device="cpu")}

    def load_state_dict(self, state):
        for prefix, net in (("trigger.", self.trigger_net), ("next_trigger.", self.next_trigger_net)):
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.synced_epoch = int(state["synced_epoch"])
