"""ANP: adversarial neuron pruning.
Wu & Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS 2021
(code: github.com/csdongxian/ANP_backdoor).

Every BatchNorm channel k ("neuron") gets a mask m_k in [0, 1] and, while the
network is perturbed, a multiplicative noise on its weight and bias:
    gamma_k -> (m_k + delta_k) * gamma_k,   beta_k -> (1 + xi_k) * beta_k,   |delta|, |xi| <= eps.
The weights stay frozen; only the masks are learnt, on clean data:

    min_m  alpha * CE(f_(m, 0)(x), y) + (1 - alpha) * max_(|delta|,|xi| <= eps) CE(f_(m + delta, 1 + xi)(x), y),

the inner max by `anp_steps` signed-gradient ascent steps of size eps / anp_steps
from a uniform random start in the eps-box.  Neurons that the backdoor needs
are the ones whose loss blows up under the perturbation; their masks go to 0.
Then the ORIGINAL network is pruned: the chosen neurons' BN weights gamma_k
are set to 0 (the code's `pruning`: the mask multiplies gamma only, so a
pruned channel outputs its constant bias beta_k).  Nothing is fine-tuned, so
every conv/linear weight comes back bit-identical.

Which neurons: `pruning_by` = "threshold" (mask <= value, as the code's `<=`),
"number" (the `value` lowest masks) or "rate" (that fraction of all neurons,
lowest masks first); ranking is global over all layers.  `prune_at_rates`
gives the pruning-rate sweep (ACC/ASR against the fraction pruned).

Defaults (the released code, optimize_mask_cifar.py / prune_neuron_cifar.py,
and the paper): eps 0.4, alpha 0.2, anp_steps 1, ascent step eps / anp_steps;
2000 steps of 128 clean images drawn with replacement, crop + flip (its clean
split is cut from the augmented training set); SGD lr 0.2, momentum 0.9 on the
masks, masks clipped to [0, 1] after each step; the network in train mode
(batch statistics, as the code); every affine BatchNorm layer masked (the code
swaps each BatchNorm2d for a NoisyBatchNorm2d); prune by threshold 0.2 (the
paper's recommended pruning threshold; BackdoorBench's cifar10.yaml sweeps
thresholds 0..0.9 in steps of 0.05).
Difference from the released code: after its ascent step the code does not
project the noise back to [-eps, eps] (random start + one step of eps can reach
2 eps); the paper's constraint |delta|, |xi| <= eps is enforced here by a clamp.
"""
import copy

import torch
import torch.nn.functional as F

from ..layers import attach_masks, batchnorms, clamp_, freeze
from .base import Defense

DEFAULTS = dict(steps=2000, batch_size=128, lr=0.2, momentum=0.9, eps=0.4, alpha=0.2, anp_steps=1,
                anp_step_size=None,  # None: eps / anp_steps, as the code
                pruning_by="threshold", pruning_value=0.2)
PRUNING_BY = ("threshold", "number", "rate")


def attach_neuron_masks(model, noisy=True):
    """Freeze ``model`` and give each BN layer a mask (and, if ``noisy``, ANP's noise) in place.
    Returns (masks: name -> Parameter, noises: list of Parameters, switch: the perturbation flag)."""
    freeze(model)
    switch, masks, noises = {"perturbed": False}, {}, []
    layers = batchnorms(model)
    if not layers:
        raise ValueError("neuron masks need a network with affine BatchNorm layers")
    for (name, bn), mask in zip(layers.items(), attach_masks(layers.values(), "weight", switch if noisy else None)):
        masks[name] = mask
        if noisy:  # beta -> (1 + xi) beta: a mask of ones whose noise is xi
            bias_mask, = attach_masks([bn], "bias", switch)
            bias_mask.requires_grad_(False)
            noises += [bn.parametrizations.weight[0].noise, bn.parametrizations.bias[0].noise]
    return masks, noises, switch


def noise_ascent_step(noises, grads, eps, step_size):
    """One signed-gradient ascent step on the neuron noise, projected back to [-eps, eps] (``_foreach_``
    operations: a few launches for all the layers)."""
    with torch.no_grad():
        torch._foreach_add_(noises, torch._foreach_sign(list(grads)), alpha=step_size)
        clamp_(noises, -eps, eps)


def select_neurons(masks: dict, pruning_by: str, value: float) -> list:
    """The (layer name, channel) pairs to prune, lowest mask first, ranked over all layers."""
    if pruning_by not in PRUNING_BY:
        raise ValueError(f"pruning_by must be one of {PRUNING_BY}, not {pruning_by!r}")
    names = [name for name, m in masks.items() for _ in range(m.numel())]
    channels = [c for m in masks.values() for c in range(m.numel())]
    values = torch.cat([m.detach().flatten().float().cpu() for m in masks.values()])
    if pruning_by == "threshold":
        count = int((values <= value).sum())
    elif pruning_by == "number":
        count = int(value)
    else:
        count = round(value * len(values))
    order = torch.sort(values, stable=True).indices[:max(0, min(count, len(values)))]
    return [(names[i], channels[i]) for i in order.tolist()]


def prune_neurons(model, neurons):
    """Zero the BN weight of each (layer name, channel) in ``neurons``, in place."""
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, channel in neurons:
            layers[name].weight[channel] = 0.0
    return model


def prune_at_rates(model, masks: dict, rates):
    """The pruning-rate sweep: for each rate, yield (rate, a copy of ``model`` with that
    fraction of its neurons pruned, lowest mask first).  ``masks`` is a defense's ``.masks``."""
    for rate in rates:
        yield rate, prune_neurons(copy.deepcopy(model), select_neurons(masks, "rate", rate))


class ANP(Defense):
    name = "ANP"
    DEFAULTS = DEFAULTS

    def run(self, model, clean):
        c = self.config
        eps, alpha = c["eps"], c["alpha"]
        step_size = c["anp_step_size"] if c["anp_step_size"] is not None else eps / max(1, c["anp_steps"])
        work = copy.deepcopy(model)  # masks are learnt on a copy; the original is pruned afterwards
        masks, noises, switch = attach_neuron_masks(work, noisy=True)
        mask_params = list(masks.values())
        self.stats["trainable_params"] = sum(m.numel() for m in mask_params)
        optimizer = torch.optim.SGD(mask_params, lr=c["lr"], momentum=c["momentum"])
        work.train()
        network = self.compiled(work)  # one graph per value of the perturbation switch
        batches = self.batches(clean, c["batch_size"], c["steps"])
        for _, (x, y) in self.steps(batches, c["steps"], model=work):
            if eps > 0:  # inner max: random start in the eps-box, then signed-gradient ascent
                with torch.no_grad():
                    for noise in noises:
                        noise.uniform_(-eps, eps)
                switch["perturbed"] = True
                for _ in range(c["anp_steps"]):
                    with self.autocast():
                        loss = F.cross_entropy(network(x), y)
                    noise_ascent_step(noises, torch.autograd.grad(loss, noises), eps, step_size)
                with self.autocast():
                    loss_robust = F.cross_entropy(network(x), y)
            else:
                loss_robust = 0.0
            switch["perturbed"] = False
            with self.autocast():
                loss_natural = F.cross_entropy(network(x), y)
            loss = alpha * loss_natural + (1 - alpha) * loss_robust
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=mask_params)
            optimizer.step()
            clamp_(mask_params, 0.0, 1.0)
        self.masks = {name: m.detach().cpu().clone() for name, m in masks.items()}
        neurons = select_neurons(self.masks, c["pruning_by"], c["pruning_value"])
        prune_neurons(model, neurons)
        self.stats.update(pruned_neurons=len(neurons), total_neurons=self.stats["trainable_params"],
                          max_abs_noise=max((n.abs().max().item() for n in noises), default=0.0))
        return model
