"""Vanilla fine-tuning (FT): the classic baseline (e.g. Liu et al., "Fine-Pruning",
RAID 2018; the FT rows of BackdoorBench).

Minimises the plain cross-entropy of all weights on the clean set,
    min_theta  E_(x,y)~D_clean  CE(f_theta(aug(x)), y).
Defaults: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine to 0, batches of
128 drawn with replacement, crop + flip; 1000 steps, the same budget NFT gets,
so the two differ only in what they train and how.
"""
import torch

from .base import Defense, cosine_lr, count_trainable, cross_entropy_step

DEFAULTS = dict(steps=1000, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4)


class FineTuning(Defense):
    name = "FT"
    DEFAULTS = DEFAULTS

    def run(self, model, clean):
        c = self.config
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.stats["trainable_params"] = count_trainable(params)
        optimizer = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
        batches = self.batches(clean, c["batch_size"], c["steps"])
        network = self.compiled(model)
        for step, (x, y) in self.steps(batches, c["steps"], model=model):
            optimizer.param_groups[0]["lr"] = cosine_lr(step, c["steps"], c["lr"])
            self.update(network, params, optimizer, x, y)
        return model

    def update(self, model, params, optimizer, x, y):
        """One step on a clean batch; fine-tuning variants (FT-SAM) change only this."""
        cross_entropy_step(model, optimizer, x, y, self.autocast())
