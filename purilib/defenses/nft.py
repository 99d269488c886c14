"""NFT: neural-mask fine-tuning with MixUp.
Karim et al., "Augmented Neural Fine-Tuning for Efficient Backdoor Purification", ECCV 2024.

Weights stay frozen.  Every BatchNorm layer inside the network's blocks (all
but those attached directly to the root module: the stem / final BN) gets a
per-channel multiplicative mask m_l on its weight, gamma_l -> m_l * gamma_l,
initialised to 1.  The masks minimise a MixUp loss plus a pull towards 1:

    min_m  E[ lam * CE(f_m(x~), y_a) + (1 - lam) * CE(f_m(x~), y_b) ]
           + eta / N_c * sum_l ||1 - m_l||_1,
    x~ = lam * x_a + (1 - lam) * x_b,  lam ~ Beta(1, 1) once per batch,

and after every step layer l's mask (l = 1, 2, ... in module order) is clamped
to [alpha * exp(-beta * l), 1]: deeper layers may be attenuated more.
N_c is the number of clean images per class.  ``mixup_alpha=0`` trains on the
clean batches unmixed (lam = 1).

Defaults (the authors' released code): eta 0.001, alpha 0.8, beta 0.5; SGD on
the masks only, lr 0.05, momentum 0.95, no weight decay; 1000 steps of 128
images drawn with replacement, crop + flip; the network in train mode (BN
running statistics follow the clean batches, as in the released code).
Differences from the released code, which follows the paper's intent:
its cosine schedule (eta_min 0.02) is stepped every 200 steps and never
reaches 0.02; here the learning rate follows the cosine per step from 0.05 to
0.02.  Its accuracy bookkeeping crashes after the first step (undefined
counters); here there is none inside the loop.  No pruning follows.
The released code masks a post-activation ResNet-18 (``resnet18`` here: 19
block BNs, stem BN left out).  On the field's PreAct-ResNet-18 every BN is
inside a block (16); on ResNet-50, 52 (3 per bottleneck, 4 in shortcuts).
A network without blocks (VGG-16-BN: one chain of conv + BN + ReLU) has no
stem to tell apart from them: all its BN layers are masked (13).  The method
masks BN channels; leaving the stem out is a detail of the released ResNet
code with no counterpart in a plain chain.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import generator
from ..layers import attach_masks, batchnorms, clamp_, fold_masks, frozen, mask_l1, mask_statistics
from .base import Defense, cosine_lr

DEFAULTS = dict(steps=1000, batch_size=128, lr=0.05, final_lr=0.02, momentum=0.95,
                mask_reg=0.001, clamp_alpha=0.8, clamp_beta=0.5, mixup_alpha=1.0,
                # the switches below isolate NFT's ingredients (the nft-study table); the paper's setting first
                bn_train_mode=True,   # False: BN keeps its running statistics
                mask_layers="blocks",  # "all": every BN, the stem / final BN too
                clamp=True)            # False: the masks are left unbounded after each step


def _has_batchnorm(module):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def block_batchnorms(model):
    """BatchNorm layers inside the blocks: every BN but those attached directly to the
    network's root (its stem / final BN); every BN when none is inside a block (VGG).
    The root is found below wrappers such as DataParallel's ``module`` or
    ``nn.Sequential(normalize, net)``: while a single child holds all the BN layers,
    descend into it."""
    root = model
    while True:
        holders = [c for c in root.children() if _has_batchnorm(c)]
        if len(holders) != 1 or isinstance(holders[0], nn.modules.batchnorm._BatchNorm):
            break
        root = holders[0]
    direct = {id(c) for c in root.children()}
    inside = [m for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in direct]
    if not inside:  # no blocks (a plain chain such as VGG): no stem BN to leave out, every BN is masked
        return [m for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return inside


def layer_floors(count, alpha, beta):
    """The lower bound of layer l's mask (l = 1, 2, ...): alpha * exp(-beta * l)."""
    return [alpha * math.exp(-beta * l) for l in range(1, count + 1)]


class NFT(Defense):
    name = "NFT"
    DEFAULTS = DEFAULTS
    checkpoint_every = 200  # the release evaluates every 200 steps: tables record ACC / ASR there

    def run(self, model, clean):
        c = self.config
        if c["mask_layers"] not in ("blocks", "all"):
            raise ValueError(f"NFT: mask_layers must be 'blocks' or 'all', not {c['mask_layers']!r}")
        layers = block_batchnorms(model) if c["mask_layers"] == "blocks" else list(batchnorms(model).values())
        if not layers:
            raise ValueError("NFT needs a network with BatchNorm layers")
        with frozen(model):
            masks = attach_masks(layers)
            self.stats["trainable_params"] = sum(m.numel() for m in masks)
            floors = layer_floors(len(masks), c["clamp_alpha"], c["clamp_beta"])
            optimizer = torch.optim.SGD(masks, lr=c["lr"], momentum=c["momentum"], weight_decay=0.0)
            per_class = len(clean) / clean.num_classes
            alpha = torch.tensor(float(c["mixup_alpha"]), device=self.device)
            beta = torch.distributions.Beta(alpha, alpha) if c["mixup_alpha"] > 0 else None
            g = generator(self.seed + 1, self.device)
            model.train(c["bn_train_mode"])
            network = self.compiled(model)
            batches = self.batches(clean, c["batch_size"], c["steps"])
            for step, (x, y) in self.steps(batches, c["steps"], model=model):
                optimizer.param_groups[0]["lr"] = cosine_lr(step, c["steps"], c["lr"], c["final_lr"])
                lam = beta.sample() if beta is not None else torch.ones_like(alpha)  # on the device: no sync
                partner = torch.randperm(len(y), generator=g, device=y.device)
                with self.autocast():
                    out = network(lam * x + (1 - lam) * x[partner])
                    loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[partner])
                reg = mask_l1(masks, center=1.0) * c["mask_reg"] / per_class
                optimizer.zero_grad(set_to_none=True)
                (loss + reg).backward()
                optimizer.step()
                if c["clamp"]:
                    clamp_(masks, floors, 1.0)
            self.stats.update(mask_statistics(masks))
            fold_masks(layers)  # a plain model comes back
        return model
