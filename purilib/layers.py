"""What several methods need to know about a network's structure, and masks on its weights.

- ``classifier_of(model)``: the last ``nn.Linear`` (the classifier of every model here).
- ``batchnorms(model)``: every affine BatchNorm layer, by module name.
- ``Mask`` / ``attach_masks`` / ``fold_masks``: a trainable multiplicative mask on a
  weight through ``torch.nn.utils.parametrize`` (architecture-agnostic): per output
  channel (NFT, ANP, RNP: gamma -> m * gamma) or per element (AWM: W -> m * W).
  Masks are made on the weight's device and dtype (``torch.ones_like``).
- ``clamp_`` / ``mask_l1``: a set of masks clamped, and its L1 norm, each in a few operations.
- ``freeze(model, trainable)`` / ``frozen(...)``: every parameter frozen but ``trainable`` (restored
  after, for the context manager).
- ``batchnorm_as_affine(model)``: eval-mode BatchNorm computed as the affine map it is (for second
  derivatives in a few operations).
"""
import types
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize


def classifier_of(model) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear classifier")
    return linears[-1]


def batchnorms(model) -> dict:
    """Every affine BatchNorm layer of the network, by module name, in module order."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}


class Mask(nn.Module):
    """Parametrisation w -> m * w with a trainable mask m of w's shape (``extra`` adds a second
    trainable term while ``switch['perturbed']`` is set: ANP's noise)."""
    def __init__(self, weight, switch=None):
        super().__init__()
        self.mask = nn.Parameter(torch.ones_like(weight))
        self.switch = switch
        if switch is not None:
            self.noise = nn.Parameter(torch.zeros_like(weight))

    def forward(self, weight):
        if self.switch is not None and self.switch["perturbed"]:
            return weight * (self.mask + self.noise)
        return weight * self.mask


def attach_masks(modules, name="weight", switch=None) -> list:
    """Register a :class:`Mask` on ``name`` of each module; return the masks (trainable)."""
    for module in modules:
        parametrize.register_parametrization(module, name, Mask(getattr(module, name), switch))
    return [getattr(module.parametrizations, name)[0].mask for module in modules]


def fold_masks(modules, name="weight"):
    """Write m * w into plain weights and drop the parametrisations: a plain model comes back."""
    for module in modules:
        if parametrize.is_parametrized(module, name):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def mask_statistics(masks) -> dict:
    """What a trained set of masks did: each layer's mean, and how many entries fell under 0.5."""
    with torch.no_grad():
        return {"mask_mean_per_layer": [round(m.float().mean().item(), 3) for m in masks],
                "masks_below_half": sum(int((m < 0.5).sum()) for m in masks),
                "mask_entries": sum(m.numel() for m in masks)}


def freeze(model, trainable=()) -> dict:
    """Freeze every parameter of ``model`` except ``trainable``; return the previous flags."""
    flags = {p: p.requires_grad for p in model.parameters()}
    keep = {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return flags


@contextmanager
def frozen(model, trainable=()):
    """``freeze`` inside; each parameter's flag restored on exit."""
    flags = freeze(model, trainable)
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def clamp_(tensors, low, high):
    """Clamp each tensor in place (masks after an optimiser step); ``low`` may be one bound per tensor.
    Two ``_foreach_`` operations (the ones torch's optimisers use): on CUDA, a launch or two for all
    the tensors instead of one per tensor; the same values as ``t.clamp_(low, high)``."""
    tensors = list(tensors)
    with torch.no_grad():
        torch._foreach_clamp_min_(tensors, list(low) if isinstance(low, (list, tuple)) else low)
        torch._foreach_clamp_max_(tensors, high)


def mask_l1(masks, center=0.0):
    """sum_l ||m_l - center||_1 over all the masks as one flat vector: a few operations however many
    layers (its gradient, elementwise, is the per-layer sum's, bit for bit)."""
    return (torch.cat([m.flatten() for m in masks]) - center).abs().sum()


def _affine_batchnorm(self, x):
    scale = self.weight * torch.rsqrt(self.running_var + self.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul((self.bias - self.running_mean * scale).view(shape), x, scale.view(shape))


@contextmanager
def batchnorm_as_affine(model):
    """Inside, every affine BatchNorm layer with running statistics computes, in eval mode, the function
    it is: x * a + b, a = gamma / sqrt(var + eps), b = beta - mean * a (gamma and beta trainable).  The
    same outputs and gradients; but autograd differentiates this form twice in a few elementwise
    operations per layer, where the fused kernel's double backward is a long generic formula (I-BAU's
    hypergradient).  The model must stay in eval mode inside."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.affine and m.track_running_stats and "forward" not in m.__dict__]
    if any(layer.training for layer in layers):
        raise ValueError("batchnorm_as_affine: the model must be in eval mode (BN on its running statistics)")
    for layer in layers:
        layer.forward = types.MethodType(_affine_batchnorm, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward

