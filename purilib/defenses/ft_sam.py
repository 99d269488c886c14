"""FT-SAM: fine-tuning with sharpness-aware minimisation.
Zhu, Wei, Shen, Fan, Wu, "Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization",
ICCV 2023 (the authors' code is BackdoorBench's defense/ft-sam.py and utils/defense_utils/sam/).

All weights w minimise the worst clean loss in a neighbourhood scaled by the weights' own magnitude
(adaptive SAM, T_w = |w| element-wise), which shrinks the large-norm (backdoor-related) neurons:

    min_w  max_{||T_w^-1 e||_2 <= rho}  E_(x,y)~D_clean  CE_ls(f_{w+e}(aug(x)), y).

One step, first order in e: g = grad L(w); e = rho * T_w^2 g / ||T_w g||_2 (plain SAM: T_w = 1, e = rho g/||g||);
g' = grad L(w + e); restore w; take the optimiser's step from w with g'.  CE_ls is cross-entropy with label
smoothing in the authors' form: 1 - s on the true class, s / (C - 1) on each other class.

Defaults (BackdoorBench config/defense/ft-sam/cifar10.yaml and ft-sam.py, the authors' release): rho 2
(rho_max = rho_min = 2, i.e. constant), adaptive on (its --adaptive flag defaults to True), label smoothing
0.1, SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine, batches of 256 with crop + flip; the paper's
100 epochs over its 5% clean set (2,500 images, 10 batches of 256 per epoch) are `steps` = 1000; smaller
clean sets are sampled with replacement for the same number of steps.  The BN running statistics follow the
clean batches at w, not the perturbed pass.
Differences from the released code: its CosineAnnealingLR (T_max 100) is stepped every batch, so the rate
oscillates with a period of 200 steps; here it follows one cosine to 0 over `steps`.  It restores w by
subtracting e (exact here: w is copied back).  Its gradient-decomposition term (alpha) is 0 in the config and
left out.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .ft import FineTuning

DEFAULTS = dict(steps=1000, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                rho=2.0, adaptive=True, label_smoothing=0.1)


def smooth_cross_entropy(logits, labels, smoothing):
    """CE against 1 - s on the true class and s / (C - 1) on the others (the authors' smooth_crossentropy)."""
    target = torch.full_like(logits, smoothing / (logits.shape[1] - 1))
    target.scatter_(1, labels.unsqueeze(1), 1.0 - smoothing)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@torch.no_grad()
def ascent_perturbation(params, rho, adaptive):
    """e(w) from the gradients in p.grad: rho * T^2 g / ||T g|| with T = |w| (adaptive) or 1, so ||T^-1 e|| = rho.
    In ``_foreach_`` operations (a few launches for all the parameters, not a few per parameter)."""
    grads = [p.grad for p in params]
    magnitudes = torch._foreach_abs(params) if adaptive else None
    scaled = torch._foreach_mul(magnitudes, grads) if adaptive else grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
    e = torch._foreach_mul(magnitudes, rho) if adaptive else torch._foreach_mul(scaled, rho)
    if adaptive:
        torch._foreach_mul_(e, scaled)
    torch._foreach_div_(e, norm + 1e-12)
    return e


@contextlib.contextmanager
def frozen_bn_statistics(model):
    """BN layers normalise with the batch as usual but do not update their running statistics."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def sam_step(model, params, optimizer, loss_fn, rho, adaptive, autocast=None):
    """One (adaptive) SAM update; returns the loss at w and the perturbation e that was applied."""
    autocast = autocast or contextlib.nullcontext()
    with autocast:
        loss = loss_fn(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        e = ascent_perturbation(params, rho, adaptive)
        w = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(w, params)
        torch._foreach_add_(params, e)  # climb to w + e(w)
    optimizer.zero_grad(set_to_none=True)
    with frozen_bn_statistics(model), autocast:
        perturbed_loss = loss_fn(model)
    perturbed_loss.backward()  # g' = grad L(w + e)
    with torch.no_grad():
        torch._foreach_copy_(params, w)  # back to w; the step below moves w along g'
    optimizer.step()
    return loss.detach(), e


class FTSAM(FineTuning):
    """Fine-tuning (the FT loop: same optimiser, schedule and batches) whose step is SAM's."""
    name = "FT-SAM"
    DEFAULTS = DEFAULTS

    def update(self, model, params, optimizer, x, y):
        c = self.config
        sam_step(model, params, optimizer, lambda m: smooth_cross_entropy(m(x), y, c["label_smoothing"]),
                 c["rho"], c["adaptive"], self.autocast())
