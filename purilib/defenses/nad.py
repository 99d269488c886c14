"""NAD: neural attention distillation.
Li, Lyu, Koren, Lyu, Li, Ma, "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural
Networks", ICLR 2021 (code: github.com/bboylyg/NAD).

Stage 1: the teacher T is a copy of the backdoored model fine-tuned on the clean set with cross-entropy.
Stage 2: the student S (the backdoored model itself) minimises

    CE(S(x), y) + sum_l beta_l * MSE(A(S_l(x)), A(T_l(x))),   A(a) = sum_c |a_c|^p / ||sum_c |a_c|^p||_2,

over the outputs a of the last three residual stages (layer2, layer3, layer4 of a ResNet-18; the three
groups of the authors' WRN-16-1): A sums |a|^p over channels and normalises the H x W map to unit L2 norm
(Zagoruyko & Komodakis' attention transfer, the authors' at.py).  The teacher is frozen in eval mode.

Defaults (the authors' config.py, main.py and README): p 2; betas 500, 1000, 1000 (low, middle, high
stage); SGD momentum 0.9, Nesterov, weight decay 1e-4, batches of 64, crop + flip; lr 0.1 for the first 2
epochs, then 0.01 (utils.adjust_learning_rate); student 20 epochs; teacher 10 epochs ("5~10", README),
trained by the same script with all betas 0, i.e. the same schedule.  Budget: on the authors' 5% clean set
(2,500 images, 40 batches of 64 per epoch) that is 400 + 800 = `steps` 1200; `steps` is split between
teacher and student as 10 : 20 and the lr drops after 2 of each stage's epochs (20% of the teacher's steps,
10% of the student's).  Smaller clean sets are sampled with replacement for the same number of steps.
BackdoorBench (config/defense/nad/cifar10.yaml) trains 10 + 10 epochs at lr 0.01, weight decay 5e-4.
Difference from the released code: stages are found generically (forward hooks on the innermost
nn.Sequential containers of blocks) instead of a model that returns its activations.  A network without
residual stages (VGG-16-BN: one nn.Sequential of conv, BN, ReLU and pooling layers) is divided by its
max-pools: each conv group ends at one, and the group's output is the pool's input, read there (at the
group's own resolution, 8x8, 4x4 and 2x2 for the last three of VGG-16 on 32x32 images; after the last
pool the map is 1x1 and its attention map a constant).  BackdoorBench distils VGG-19-BN on one map only,
the last one; here the last three groups stand for the three stages, as for every network.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import Defense, count_trainable, cross_entropy_step

DEFAULTS = dict(steps=1200, batch_size=64, teacher_epochs=10, student_epochs=20, lr=0.1, lr_drop_epoch=2,
                lr_after_drop=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True,
                betas=(500.0, 1000.0, 1000.0), p=2.0)


def attention_map(activation, p=2.0, eps=1e-6):
    """sum_c |a_c|^p per position, divided by the L2 norm of that H x W map: [B, C, H, W] -> [B, 1, H, W]."""
    a = activation.float().abs().pow(p).sum(1, keepdim=True)
    return a / (torch.linalg.vector_norm(a, dim=(2, 3), keepdim=True) + eps)


def attention_loss(student_activation, teacher_activation, p=2.0):
    return F.mse_loss(attention_map(student_activation, p), attention_map(teacher_activation, p))


def _is_block(module):
    return not isinstance(module, nn.Conv2d) and any(isinstance(m, nn.Conv2d) for m in module.modules())


def residual_stages(model):
    """The stages of a ResNet-like network in forward order: the innermost nn.Sequential containers whose
    children are all blocks (modules holding convolutions), e.g. layer1..layer4."""
    candidates = [m for m in model.modules()
                  if isinstance(m, nn.Sequential) and len(m) > 0 and all(_is_block(c) for c in m)]
    return [m for m in candidates if not any(o is not m and o in candidates for o in m.modules())]


def attention_points(model):
    """Where the attention maps are read, in forward order: (modules, read their inputs?).  The residual
    stages' outputs; for a network without any (VGG), the inputs of its max-pools: its conv groups' outputs."""
    stages = residual_stages(model)
    if stages:
        return stages, False
    return [m for m in model.modules() if isinstance(m, nn.MaxPool2d)], True


class _Recorder:
    """Keeps the outputs (or, with ``inputs=True``, the first inputs) of the given modules from the
    latest forward pass."""
    def __init__(self, modules, inputs=False):
        self.outputs = [None] * len(modules)
        self.handles = [m.register_forward_pre_hook(self._pre_hook(i)) if inputs else
                        m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, inputs, output):
            self.outputs[i] = output
        return hook

    def _pre_hook(self, i):
        def hook(module, inputs):
            self.outputs[i] = inputs[0]
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


class NAD(Defense):
    name = "NAD"
    DEFAULTS = DEFAULTS

    def _optimizer(self, params):
        c = self.config
        return torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"],
                               nesterov=c["nesterov"])

    def _lr(self, step, steps, epochs):
        c = self.config
        return c["lr"] if step < steps * c["lr_drop_epoch"] / epochs else c["lr_after_drop"]

    def run(self, model, clean):
        c = self.config
        layers, read_inputs = attention_points(model)
        layers = layers[-len(c["betas"]):]
        if len(layers) < len(c["betas"]):
            raise ValueError(f"NAD needs {len(c['betas'])} residual stages (or max-pooled conv groups), "
                             f"found {len(layers)}")
        teacher_steps = round(c["steps"] * c["teacher_epochs"] / (c["teacher_epochs"] + c["student_epochs"]))
        student_steps = c["steps"] - teacher_steps
        self.stats.update(teacher_steps=teacher_steps, student_steps=student_steps)
        batches = self.batches(clean, c["batch_size"], c["steps"])
        bar = self.steps(range(c["steps"]), c["steps"], model=model)

        # stage 1: the teacher, a fine-tuned copy
        teacher = copy.deepcopy(model).train()
        optimizer = self._optimizer([p for p in teacher.parameters() if p.requires_grad])
        for step in range(teacher_steps):
            optimizer.param_groups[0]["lr"] = self._lr(step, teacher_steps, c["teacher_epochs"])
            x, y = next(batches)
            cross_entropy_step(teacher, optimizer, x, y, self.autocast())
            next(bar)
        teacher.eval().requires_grad_(False)

        # stage 2: the student, distilled towards the teacher's attention maps
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.stats["trainable_params"] = count_trainable(params)
        optimizer = self._optimizer(params)
        student_hooks = _Recorder(layers, read_inputs)
        teacher_hooks = _Recorder(attention_points(teacher)[0][-len(c["betas"]):], read_inputs)
        for step in range(student_steps):
            optimizer.param_groups[0]["lr"] = self._lr(step, student_steps, c["student_epochs"])
            x, y = next(batches)
            with self.autocast():
                with torch.no_grad():
                    teacher(x)
                loss = F.cross_entropy(model(x), y)
                for beta, s, t in zip(c["betas"], student_hooks.outputs, teacher_hooks.outputs):
                    loss = loss + beta * attention_loss(s, t, c["p"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            next(bar)
        for _ in bar:  # the last step's callback
            pass
        student_hooks.remove()
        teacher_hooks.remove()
        return model
