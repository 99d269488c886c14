"""FP: fine-pruning.
Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks", RAID 2018 (settings: BackdoorBench, defense/fp.py, config/defense/fp/cifar10.yaml).

1. prune: run the clean set through the network and record each channel's mean
   activation in the last convolutional layer; prune channels in increasing
   order of that activation (dormant on clean data: where backdoors hide) while
        (acc_0 - acc_pruned) / acc_0 < acc_drop     (clean-set accuracy, no augmentation)
   and at most max_prune_ratio of the channels are pruned; keep the last
   pruning that was within tolerance.
2. fine-tune all weights, as FT does,
        min_theta  E_D CE(f_theta(aug(x)), y),   with the pruned channels held at 0.

The activation is that of the feature map feeding global pooling, after its
BN + ReLU: for PreAct-ResNet-18 relu(bn(layer4)), for torchvision ResNet-18
layer4's output.  Its spatial mean is exactly the classifier's input, so by
default the activations are read there (a forward pre-hook on the last Linear),
and a channel is pruned by zeroing its column of the classifier's weight: the
channel then reaches nothing, as if its filter were removed, and a plain model
of the same architecture comes back.  `layer` names another module whose output
channels (one per classifier input) rank the channels instead, e.g. "layer4"
(BackdoorBench's first version hooked layer4, before PreAct's final BN).

Defaults: BackdoorBench CIFAR-10: acc_drop 0.1 (its `acc_ratio`, a relative
drop), channels pruned ceil(1%) at a time (`once_prune_ratio` 0.01), no cap on
the pruned fraction (max_prune_ratio 1.0); fine-tuning as our FT (SGD lr 0.01,
momentum 0.9, weight decay 5e-4, cosine to 0, 1000 steps of 128 crop + flip
images drawn with replacement; BackdoorBench: 100 epochs of batch 256 over its
5% clean split, also ~1000 steps).  The paper stops at a predefined accuracy
drop on validation data without giving one number for all tasks.
Differences from BackdoorBench: it measures the accuracy drop on the clean TEST
set (a defender does not have it); here on the defender's clean set.  Its
current code prunes num_pruned - 1 channels at each step and keeps the mask of
the step that broke the tolerance (the kept model is the same object); here
exactly the last pruning within tolerance is kept, as its first version did.
"""
import math

import torch

from ..layers import classifier_of
from .ft import FineTuning

DEFAULTS = dict(steps=1000, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
                acc_drop=0.1, prune_step_ratio=0.01, max_prune_ratio=1.0,
                layer=None)  # None: the classifier's input (the pooled last feature map)


@torch.no_grad()
def channel_activations(model, clean, layer=None, batch_size=256):
    """Mean activation per channel on the clean set (eval mode, no augmentation), and the
    classifier's inputs [N, C] (to score prunings without rerunning the network)."""
    classifier, features, sums = classifier_of(model), [], []
    hooks = [classifier.register_forward_pre_hook(lambda m, inputs: features.append(inputs[0].float()))]
    if layer is not None:
        def record(module, inputs, output):
            sums.append(output.float().transpose(0, 1).flatten(1).mean(1) * len(output))
        hooks.append(dict(model.named_modules())[layer].register_forward_hook(record))
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(clean), batch_size):
        model(clean.images[start:start + batch_size].to(device).float().div_(255))
    for hook in hooks:
        hook.remove()
    features = torch.cat(features)
    activation = torch.stack(sums).sum(0) / len(clean) if sums else features.mean(0)
    if activation.numel() != classifier.in_features:
        raise ValueError(f"{layer} has {activation.numel()} channels, the classifier {classifier.in_features} inputs")
    return activation, features


class FinePruning(FineTuning):
    name = "FP"
    DEFAULTS = DEFAULTS

    def prune(self, model, clean):
        """Stage 1, in place: zero the classifier columns of the least active channels; returns them."""
        c = self.config
        activation, features = channel_activations(model, clean, c["layer"])
        classifier, labels = classifier_of(model), clean.labels.to(features.device)
        order = torch.argsort(activation, stable=True)

        def accuracy(pruned):
            weight = classifier.weight.detach().float().clone()
            weight[:, pruned] = 0.0
            logits = features @ weight.T + (classifier.bias.float() if classifier.bias is not None else 0.0)
            return (logits.argmax(1) == labels).float().mean().item()

        channels = len(order)
        step = max(1, math.ceil(channels * c["prune_step_ratio"]))
        acc_0, kept = accuracy(order[:0]), 0
        for count in range(step, int(channels * c["max_prune_ratio"]) + 1, step):
            if (acc_0 - accuracy(order[:count])) / max(acc_0, 1e-12) >= c["acc_drop"]:
                break
            kept = count
        pruned = order[:kept]
        with torch.no_grad():
            classifier.weight[:, pruned] = 0.0
        self.stats.update(pruned_channels=sorted(pruned.tolist()), prune_ratio=kept / channels,
                          clean_acc_before=acc_0, clean_acc_pruned=accuracy(pruned))
        return pruned

    def run(self, model, clean):
        self.pruned, self.classifier = self.prune(model, clean), classifier_of(model)
        return super().run(model, clean)  # FT's loop; each step is ``update`` below

    def update(self, model, params, optimizer, x, y):
        super().update(model, params, optimizer, x, y)
        with torch.no_grad():  # the pruned channels stay cut off
            self.classifier.weight[:, self.pruned] = 0.0
