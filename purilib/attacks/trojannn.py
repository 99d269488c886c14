"""TrojanNN (Liu, Ma, Aafer, Lee, Zhai, Wang & Zhang, "Trojaning Attack on Neural
Networks", NDSS 2018).  Table names: Troj-one (all-to-one), Troj-all (all-to-all).

The trigger is a small patch whose pixel values are optimised on a clean model
to excite a few internal neurons, so that the backdoor can latch onto them:
  1. Neurons: in the layer that feeds the classifier (PreAct-ResNet-18: the
     512 x width pooled features, the input of ``linear``), the ``num_neurons``
     neurons i with the largest connection weight to the next layer,
     sum_j |W[j, i]| (the paper picks the neurons "most tightly connected" to
     the next layer; BackdoorBench and TrojanZoo use this layer for ResNets).
  2. Trigger: on the mask m, p = 255 (tanh(w) + 1) / 2, w ~ N(0, 1) at start and
     optimised by Adam (lr 0.1, cosine to 0) for ``trigger_steps`` steps on
         min_w  sum_i (f_i(m p) - v)^2,   v = 100,
     f_i the selected neurons of the clean model (eval mode) on the trigger
     alone on a black image (the paper's cost; TrojanZoo's optimiser).
  3. Poisoning: x' = (1 - m) x + m p on 10% of the non-target training images,
     relabelled to the target (all-to-all: y -> y + 1 mod C).
Defaults: a 3x3 patch over rows and columns 25-27 (``size=3``, ``border=4``
pixels from the bottom-right edge), where the trigger file that the NFT
authors' script loads (NAD's ``best_square_trigger_cifar10.npz``) has it;
2 neurons, v = 100, 1000 steps, lr 0.1 (TrojanZoo / BackdoorBench defaults).  At other image
sizes the patch and its border keep their share of the image (21x21, 28 pixels in, at 224).

Deviations: the original attack retrains the clean model on reverse-engineered
data; here the backdoored model is trained from scratch on the poisoned set,
like every other attack (as BackdoorBench does).  The NAD / NFT scripts add the
stored trigger to the image, (x + p) cast to uint8, which wraps round above 255
(a bug); we stamp the patch, as the paper does.  BackdoorBench optimises an
apple-logo mask with sign-gradient steps; we keep the NFT authors' square.
Cost: one forward/backward of a single image per step, a few seconds on a CPU;
the smoke profile shortens ``trigger_steps``.
"""
import copy

import torch

from ..devices import generator
from ..layers import classifier_of
from .base import Attack, blend


def most_connected_neurons(weight: torch.Tensor, count: int) -> torch.Tensor:
    """Input neurons of a linear layer with the largest sum_j |W[j, i]|."""
    return weight.detach().abs().sum(0).argsort(descending=True)[:count].cpu()


class TrojanNN(Attack):
    name = "TrojanNN"
    needs_preparation = True

    def __init__(self, size=None, border=None, num_neurons=2, target_activation=100.0, trigger_steps=1000,
                 trigger_lr=0.1, **kwargs):
        super().__init__(**kwargs)
        n = self.image_size
        size = self.scaled(3) if size is None else size
        border = self.scaled(4) if border is None else border
        if not 1 <= size <= n - border or border < 0:
            raise ValueError(f"a {size}x{size} patch {border} pixels from the edge does not fit a {n}x{n} image")
        if num_neurons < 1 or trigger_steps < 0:
            raise ValueError("num_neurons must be >= 1 and trigger_steps >= 0")
        self.size, self.border, self.num_neurons = size, border, num_neurons
        self.target_activation, self.trigger_steps, self.trigger_lr = float(target_activation), trigger_steps, trigger_lr
        self.mask = torch.zeros(1, n, n, device="cpu")
        self.mask[:, n - border - size:n - border, n - border - size:n - border] = 1.0
        self.pattern = None  # uint8 [3, n, n], zero off the mask; set by ``prepare``
        self.initial_pattern, self.neurons, self.activations = None, None, None

    def config(self):
        return {**super().config(), "size": self.size, "border": self.border, "num_neurons": self.num_neurons,
                "target_activation": self.target_activation, "trigger_steps": self.trigger_steps,
                "trigger_lr": self.trigger_lr}

    @torch.no_grad()
    def neuron_activation(self, model, pattern) -> torch.Tensor:
        """Selected neurons' activations (float, [num_neurons]) on the trigger alone on a black image,
        the model in eval mode."""
        device, was_training = next(model.parameters()).device, model.training
        x = (self.mask * pattern.float().cpu() / 255)[None].to(device)
        try:
            return self._features(model.eval(), x)[0, self.neurons.to(device)].float().cpu()
        finally:
            model.train(was_training)

    def _features(self, model, x):
        saved = {}
        hook = classifier_of(model).register_forward_hook(lambda m, inputs, out: saved.update(x=inputs[0]))
        try:
            with self.context.autocast():
                model(x)
        finally:
            hook.remove()
        return saved["x"]

    def prepare(self, train, context):
        self.context = context
        model = copy.deepcopy(context.clean_model()).to(context.device).eval()
        model.requires_grad_(False)
        self.neurons = most_connected_neurons(classifier_of(model).weight, self.num_neurons)
        g = generator(self.seed)
        n = self.image_size
        w = torch.randn(3, n, n, generator=g, device=g.device).to(context.device).requires_grad_(True)
        mask = self.mask.to(context.device)
        self.initial_pattern = self._quantise(w)
        optimizer = torch.optim.Adam([w], lr=self.trigger_lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trigger_steps))
        neurons = self.neurons.to(context.device)
        for _ in range(self.trigger_steps):
            trigger_alone = mask * (torch.tanh(w) + 1) / 2  # the trigger on a black image, in [0, 1]
            activation = self._features(model, trigger_alone[None])[0, neurons].float()
            loss = ((activation - self.target_activation) ** 2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        self.pattern = self._quantise(w)
        self.activations = torch.stack([self.neuron_activation(model, self.initial_pattern).mean(),
                                        self.neuron_activation(model, self.pattern).mean()])

    def _quantise(self, w):
        return (self.mask * 255 * (torch.tanh(w.detach().cpu()) + 1) / 2).round().to(torch.uint8)

    def apply_trigger(self, images):
        if self.pattern is None:
            raise RuntimeError("TrojanNN's trigger is not optimised yet: call prepare() or load_state_dict()")
        return blend(images, self.pattern, self.mask, 1.0)

    def state_dict(self):
        if self.pattern is None:
            return {}
        # activations: mean selected-neuron activation of [initial, optimised] trigger on the clean model
        return {"pattern": self.pattern, "initial_pattern": self.initial_pattern, "neurons": self.neurons,
                "activations": self.activations}

    def load_state_dict(self, state):
        self.pattern, self.initial_pattern = state["pattern"], state["initial_pattern"]
        self.neurons, self.activations = state["neurons"].long(), state["activations"]
