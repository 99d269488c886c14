"""AWM: adversarial weight masking.
Chai & Chen, "One-shot Neural Backdoor Erasing via Adversarial Weight Masking", NeurIPS 2022.

Weights stay frozen.  Every conv weight gets an element-wise soft mask, W -> m * W,
m initialised to 1 (the linear classifier and BN are not masked, as in the released
ResNet, whose every nn.Conv2d, stem and shortcuts included, is a MaskedConv2d).  Each
outer round first recovers a universal additive perturbation delta (one image-sized
tensor) by gradient ascent on the masked model, then trains the masks against it:

    delta  <- argmax_delta  CE(f_(m*W)(x + delta), y^),  then  delta <- delta * min(1, tau / ||delta||_1),
    min_m  alpha * CE(f_(m*W)(x), y) + (1 - alpha) * CE(f_(m*W)(clip01(x + delta)), y) + gamma * ||m||_1,

masks clipped to [0, 1] after every step.  delta starts at 0 every round and takes
``inner_steps`` plain SGD ascent steps (lr 10), each on a fresh batch; y^ is the masked
model's own prediction on the clean image (released code; the paper's Algorithm 1 writes
the true label y, the same wherever the model is right).  The L1 "projection" is the
paper's and the code's radial rescaling, applied once after the ascent.  Then the masks
take ``inner_steps`` Adam steps; the learning rate is multiplied by 0.9 every round.

Budget: ``steps`` counts mask updates; rounds = ceil(steps / inner_steps), each with
inner_steps ascent steps then inner_steps mask steps (the last round may be shorter), so
a run costs about twice ``steps`` batches.  Defaults from the released code (main.py):
inner_steps 15 = int(500 clean images / batch 128) * 5 inner epochs, 20 outer rounds, so
steps 300; batch 128; Adam lr 0.01 decayed x0.9 per round; alpha 0.9; gamma 1e-8;
delta SGD lr 10; tau 1000.  Few-shot rule: tau = 100 when the clean set has at most
``few_shot_per_class`` (10) images per class.  The released README uses 100 for its
one-image-per-class runs and 1000 (the default) for 500 images; the threshold between
them is our choice.  The network runs in eval mode throughout (as in the released code),
so BN running statistics stay as they were.  One-shot: the released code adds 9
augmented copies (RandomResizedCrop + flip) of each of the 10 images; here every batch
is drawn with replacement and freshly augmented (crop + flip), which covers it.
Differences from the released code: with 500 images it does not augment at all; here
every batch is augmented (crop + flip), as for every purilib defense.  Its README's
one-shot run also lowers the batch to 32 and, for BadNets, raises alpha to 0.99; the
defaults here stay 128 and 0.9.  Its optional "shrink" phase (off by default) is left out.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import attach_masks, clamp_, fold_masks, frozen, mask_l1
from .base import Defense

DEFAULTS = {"steps": 300, "batch_size": 128, "inner_steps": 15, "lr": 0.01, "lr_decay": 0.9, "alpha": 0.9,
            "gamma": 1e-8, "perturbation_lr": 10.0, "trigger_norm": 1000.0, "few_shot_trigger_norm": 100.0,
            "few_shot_per_class": 10}


def project_l1(delta, radius):
    """delta * min(1, radius / ||delta||_1): rescaled onto the L1 ball when outside it (no host sync)."""
    norm = delta.detach().abs().sum(dtype=torch.float64)
    return (delta.double() * (radius / norm).clamp(max=1.0)).to(delta.dtype)


class AWM(Defense):
    name = "AWM"
    DEFAULTS = DEFAULTS

    def run(self, model, clean):
        c = self.config
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ValueError("AWM needs a network with nn.Conv2d layers")
        few_shot = len(clean) / clean.num_classes <= c["few_shot_per_class"]
        tau = c["few_shot_trigger_norm"] if few_shot else c["trigger_norm"]
        inner = max(1, min(c["inner_steps"], c["steps"]))
        rounds = math.ceil(c["steps"] / inner)
        self.stats.update(trigger_norm=tau, rounds=rounds)
        perturbation_l1, mask_min, mask_max = [], [], []
        with frozen(model):
            masks = attach_masks(convs)  # element-wise, made like each conv weight
            self.stats["trainable_params"] = sum(m.numel() for m in masks)
            optimizer = torch.optim.Adam(masks, lr=c["lr"])
            model.eval()  # as the released code: BN uses and keeps its running statistics
            network = self.compiled(model)
            # per round: `inner` batches for the perturbation, then `inner` for the masks
            batches = self.batches(clean, c["batch_size"], 2 * c["steps"])
            bar = self.steps(range(c["steps"]), c["steps"], model=model)
            for r in range(rounds):
                n = min(inner, c["steps"] - r * inner)
                optimizer.param_groups[0]["lr"] = c["lr"] * c["lr_decay"] ** r

                delta = torch.zeros(1, *clean.images.shape[1:], device=self.device, requires_grad=True)
                for _ in range(n):  # gradient ascent on the masked model's loss w.r.t. its own predictions
                    x, _ = next(batches)
                    with torch.no_grad(), self.autocast():
                        predicted = network(x).argmax(1)
                    with self.autocast():
                        loss = F.cross_entropy(network(x + delta).float(), predicted)
                    (grad,) = torch.autograd.grad(loss, delta)
                    with torch.no_grad():
                        delta += c["perturbation_lr"] * grad
                delta = project_l1(delta.detach(), tau)
                perturbation_l1.append(delta.abs().sum(dtype=torch.float64))

                for _ in range(n):
                    x, y = next(batches)
                    with self.autocast():  # eval-mode BN: one forward of clean + perturbed = two forwards
                        out = network(torch.cat([x, (x + delta).clamp(0, 1)])).float()
                    loss = (c["alpha"] * F.cross_entropy(out[:len(y)], y)
                            + (1 - c["alpha"]) * F.cross_entropy(out[len(y):], y)
                            + c["gamma"] * mask_l1(masks))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    clamp_(masks, 0.0, 1.0)
                    next(bar)
                mask_min.append(torch.stack([m.min() for m in masks]).min())
                mask_max.append(torch.stack([m.max() for m in masks]).max())
            for _ in bar:  # the last step's callback
                pass
            # read once, at the end: no host sync inside the loop
            self.stats.update(perturbation_l1=torch.stack(perturbation_l1).tolist(),
                              mask_min=torch.stack(mask_min).tolist(), mask_max=torch.stack(mask_max).tolist(),
                              mask_mean=round(sum(m.sum().item() for m in masks) / self.stats["trainable_params"], 4))
            fold_masks(convs)  # a plain model comes back
        return model
