"""RNP: reconstructive neuron pruning.
Li, Lyu, Ma, Koren, Lyu, Li & Jiang, "Reconstructive Neuron Pruning for Backdoor Defense",
ICML 2023 (code: github.com/bboylyg/RNP, main.py).

Three stages on the clean set D:
 1. unlearn: gradient ASCENT of all weights on the clean loss,
        max_theta  E_D CE(f_theta(aug(x)), y),
    until the clean accuracy (over the last pass through D) falls to
    clean_threshold or the unlearning budget ends.  Clean features go first;
    the backdoor's neurons survive.
 2. recover: freeze the unlearned weights theta_u, give every BN channel a mask
    m in [0, 1] (gamma -> m * gamma), and minimise
        min_m  alpha * E_D CE(f_(theta_u, m)(aug(x)), y),
    clipping m to [0, 1] after each step.  Masks that restore clean accuracy
    go up; the backdoor neurons' masks stay low.
 3. prune the ORIGINAL network: zero the BN weight gamma_k of every neuron whose
    mask is <= the threshold (as ANP's `pruning`, which RNP's code reuses).
    No fine-tuning follows, so all other weights come back bit-identical.

`steps` is split: at most unlearn_fraction * steps unlearning steps (fewer if
the accuracy threshold is reached) and the remaining steps recovering.  The
code's 500 clean images in batches of 128 make 4 steps an epoch: its 20
unlearning + 20 recovering epochs are the default 160 = 80 + 80 steps.

Defaults (the released code): unlearning SGD lr 0.01, momentum 0.9, weight
decay 5e-4, lr x0.1 at epoch 10 of 20 (here: after half the unlearning steps;
the code's 21st epoch at x0.01 is dropped),
gradient norm clipped to 20, clean_threshold 0.2; recovering SGD lr 0.2,
momentum 0.9 on the masks, loss scaled by alpha 0.2; every affine BatchNorm
layer masked (the code builds the network with MaskBatchNorm2d as norm layer);
network in train mode in both stages; batches of 128 drawn with replacement,
crop + flip (the code's loader augments); prune by threshold 0.2 (the code
sweeps thresholds 0..0.9 by 0.05 and the README's run reaches a low ASR at 0.2:
24 of 4800 neurons, ASR 6.6, ACC 92.8; BackdoorBench prunes at 0.7).
Clean data: the code draws its 500 images from the training split the backdoored
model was trained on (data/poison_tool_cifar.py, ``train=True``; ratio 0.01), so
its unlearning starts at ~98% accuracy on memorised images; NFT Table 1 gives RNP
such images (``Table.clean_sources``), poisoned ones excluded.
Differences from the released code: it calls clip_grad_norm_ before backward,
which clips nothing; here the clip is applied to the fresh gradients, as meant.
Its unlearning stops on the running accuracy of an epoch drawn without
replacement; here on the accuracy over the last ceil(|D| / batch) steps.
"""
import copy
import math

import torch
import torch.nn.functional as F

from ..layers import clamp_
from .anp import attach_neuron_masks, prune_neurons, select_neurons
from .base import Defense, count_trainable

DEFAULTS = dict(steps=160, batch_size=128, unlearn_fraction=0.5, unlearning_lr=0.01, momentum=0.9,
                weight_decay=5e-4, lr_drop=0.1, grad_clip=20.0, clean_threshold=0.2,
                recovering_lr=0.2, alpha=0.2, pruning_by="threshold", pruning_value=0.2)


class RNP(Defense):
    name = "RNP"
    DEFAULTS = DEFAULTS

    def unlearn(self, model, clean):
        """Stage 1, in place: gradient ascent on the clean loss.  Returns the steps taken."""
        c = self.config
        budget = int(c["steps"] * c["unlearn_fraction"])
        epoch = max(1, math.ceil(len(clean) / c["batch_size"]))  # steps per pass through the clean set
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=c["unlearning_lr"], momentum=c["momentum"],
                                    weight_decay=c["weight_decay"])
        model.train()
        seen = steps = 0
        accuracy, passes = float("nan"), []
        batches = self.batches(clean, c["batch_size"], budget)
        correct = torch.zeros((), device=self.device, dtype=torch.long)  # counted on the device
        for step, (x, y) in self.steps(batches, budget, desc="RNP unlearn", model=model):
            lr = c["unlearning_lr"] * (c["lr_drop"] if step >= budget // 2 else 1.0)
            optimizer.param_groups[0]["lr"] = lr
            with self.autocast():
                out = model(x)
                loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            (-loss).backward()
            if c["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, max_norm=c["grad_clip"])
            optimizer.step()
            correct, seen, steps = correct + (out.argmax(1) == y).sum(), seen + len(y), step + 1
            if steps % epoch == 0:  # one host sync per pass through the clean set
                accuracy, seen = correct.item() / seen, 0
                passes.append(round(accuracy, 4))
                correct.zero_()
                if accuracy <= c["clean_threshold"]:
                    break
        # the clean accuracy of each pass through the clean set while unlearning (the README's log: 0.978 at the
        # first of 13 epochs, falling slowly until 0.198)
        self.stats.update(unlearning_steps=steps, unlearning_accuracy=round(accuracy, 4), unlearning_passes=passes)
        return steps

    def recover(self, unlearned, clean):
        """Stage 2: learn BN-channel masks of the (frozen) unlearned network; returns name -> mask."""
        c = self.config
        steps = c["steps"] - int(c["steps"] * c["unlearn_fraction"])
        masks, _, _ = attach_neuron_masks(unlearned, noisy=False)
        mask_params = list(masks.values())
        optimizer = torch.optim.SGD(mask_params, lr=c["recovering_lr"], momentum=c["momentum"])
        unlearned.train()
        batches = self.batches(clean, c["batch_size"], steps, seed_offset=1)
        for _, (x, y) in self.steps(batches, steps, desc="RNP recover", model=unlearned):
            with self.autocast():
                loss = c["alpha"] * F.cross_entropy(unlearned(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clamp_(mask_params, 0.0, 1.0)
        return {name: m.detach().cpu().clone() for name, m in masks.items()}

    def run(self, model, clean):
        c = self.config
        unlearned = copy.deepcopy(model)  # the original stays intact for stage 3
        weights = count_trainable(p for p in unlearned.parameters() if p.requires_grad)
        self.unlearn(unlearned, clean)
        self.masks = self.recover(unlearned, clean)
        neurons = select_neurons(self.masks, c["pruning_by"], c["pruning_value"])
        prune_neurons(model, neurons)
        total = sum(m.numel() for m in self.masks.values())
        values = torch.cat([m.flatten() for m in self.masks.values()])
        # how many neurons each threshold of the released sweep (0 .. 0.9 by 0.05) would prune: beside the
        # README's log (12 .. 753 of 4800); no ASR is measured for them (that would need the trigger)
        sweep = {f"{t:.2f}": int((values <= t).sum()) for t in (round(0.05 * i, 2) for i in range(19))}
        self.stats.update(trainable_params=weights + total, unlearned_weights=weights, mask_params=total,
                          pruned_neurons=len(neurons), total_neurons=total, pruned_by_threshold=sweep)
        return model
