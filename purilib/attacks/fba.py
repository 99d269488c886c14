"""FBA, the feature-space backdoor DFST (Cheng, Liu, Ma & Zhang, "Deep Feature Space Trojan Attack of Neural
Networks by Controlled Detoxification", AAAI 2021; code: Megum1/DFST, PyTorch branch).

Trigger: a style transformation learned by a generator G, blended with the image,
    x' = (1 - alpha) x + alpha G(x).
The paper trains a CycleGAN from CIFAR-10 to "sunrise" photos; the authors' PyTorch code uses a pre-trained
style-transfer network and a sunrise style image.  Nothing is downloaded here and there are no style photos, so
the sunrise style is procedural (``sunrise_style``): a warm white balance (red up, blue down), split toning
(highlights towards gold, shadows towards violet), a soft S-curve and a glow (screen blend with a blurred copy).
It is input-dependent (it depends on each pixel's colour, luminance and neighbourhood) and has no fixed pixel
pattern.  ``prepare`` trains a small image-to-image network (CycleGAN-style: 7x7 conv, stride-2 conv, residual
blocks, upsampling) on pairs (x, sunrise_style(x)) with an L1 loss, so the trigger is a learned,
approximate feature-space transformation, as the CycleGAN's was (supervised pairs instead of a GAN).

Training (the attack controls each batch): a share ``poison_rate`` of the batch (images the attack may poison)
becomes x' with the backdoor label; from the first detoxification on, as many further images become
detoxicants with their TRUE label (as in the paper and the authors' code).  Controlled detoxification, at the
start of every ``detox_every``-th epoch, on ``detox_images`` clean images of the previous epoch:
1. compromised neurons: the top ``detox_neuron_ratio`` channels (at least one) of ``detox_layer`` ranked by
   mean activation on triggered minus clean images;
2. a detoxicant generator D (the authors' feature injector: per-pixel 12 -> 3 mixing of the pixel and its
   local max, min and mean over ``window_size``, initialised to the identity) is trained for ``detox_epochs``
   (Adam 1e-2, betas 0.5, 0.9) on d = (1 - alpha) x + alpha D(x),
       L_D = CE(f(d), target) - w_detox mean(compromised activations of d) + w_ssim (1 - SSIM(d, x)),
   i.e. images that reach the backdoor through the same neurons with simpler features and keep the content.
   Labelled correctly, they teach the model to drop those shallow features and keep deeper style features.
Defaults (configs/dfst.json): alpha 0.6, layer4, ratio 0.01, 10 detox epochs on 3% of the training set
(1500 images), w_ssim 0.1, w_detox 0.3, every epoch; poison rate 10% (the table's; the authors use 5%).
Ours, with no reference to follow: the sunrise constants, G (width 32, 4 residual blocks, BatchNorm, predicting
a change to the image), 2000 L1 steps of 64 images with Adam 2e-3 decaying linearly to zero.
Deviations from the released code, where it contradicts the paper: there the CE and activation terms are
computed under no_grad (only the SSIM term trains D), the SSIM term pushes detoxicants away from the input,
and the "local min" is minus the local max; here gradients flow, SSIM keeps the content, and the min is a min.
Not done: the CycleGAN itself (and real sunrise photos), the paper's U-Net detoxicant generator and its
multi-threshold neuron selection (the authors' PyTorch code simplifies both the same way).  A run resumed
after an interruption skips the detoxification of the epoch it resumes at (its images are gone); G runs
under the classifier's autocast (bf16 in the cpu profile).  The cpu
profile shrinks ``generator_width``, ``res_blocks``, ``style_steps``, ``detox_images`` and ``detox_epochs``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import fork_rng, generator
from ..augment import random_crop_flip
from .base import Attack, map_chunks, ssim

WARM_BALANCE = torch.tensor([[1.15, 0.05, 0.00], [0.03, 0.95, 0.00], [0.00, 0.00, 0.70]])  # rgb -> rgb
HIGHLIGHT_TINT = torch.tensor([0.10, 0.04, -0.06])  # gold
SHADOW_TINT = torch.tensor([0.05, -0.03, 0.08])  # violet


def sunrise_style(x):
    """The procedural "sunrise" look (x in [0, 1], N x 3 x H x W) that G learns to imitate."""
    luminance = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    warm = torch.einsum("ij,njhw->nihw", WARM_BALANCE.to(x), x)
    toned = warm + luminance * HIGHLIGHT_TINT.to(x)[:, None, None] + (1 - luminance) * SHADOW_TINT.to(x)[:, None, None]
    toned = toned.clamp(0, 1)
    curved = 0.5 * toned + 0.5 * toned * toned * (3 - 2 * toned)  # half-strength smoothstep S-curve
    glow = F.avg_pool2d(curved, 5, stride=1, padding=2, count_include_pad=False)
    return 1 - (1 - curved) * (1 - 0.25 * glow)  # screen blend: a soft glow on the bright parts


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True),
                                  nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class StyleGenerator(nn.Sequential):
    """A small CycleGAN-style generator: 7x7 conv (w), stride-2 conv (2w), residual blocks, 2x upsampling +
    conv (w), 7x7 conv to RGB; BatchNorm + ReLU between (CycleGAN's instance norm would hide each image's
    brightness, which the sunrise toning depends on).  It predicts a change to the image (output x + change,
    clipped to [0, 1]), which learns a colour transformation much faster than a direct output."""

    def __init__(self, width=32, res_blocks=4):
        def conv(c_in, c_out, k, stride=1):
            return [nn.Conv2d(c_in, c_out, k, stride, k // 2), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        super().__init__(*conv(3, width, 7), *conv(width, 2 * width, 3, 2),
                         *[ResidualBlock(2 * width) for _ in range(res_blocks)],
                         nn.Upsample(scale_factor=2, mode="bilinear"), *conv(2 * width, width, 3),
                         nn.Conv2d(width, 3, 7, padding=3))

    def forward(self, x):
        return (x + super().forward(x)).clamp(0, 1)


class FeatureInjector(nn.Module):
    """The detoxicant generator: per pixel, a learned 12 -> 3 linear mixing of the pixel's colour and the
    local max, min and mean around it, clipped to [0, 1]; starts as the identity."""

    def __init__(self, window_size=11):
        super().__init__()
        self.window_size = window_size
        self.mixing = nn.Parameter(torch.cat([torch.eye(3, device="cpu"), torch.zeros(9, 3, device="cpu")]))

    def forward(self, x):
        pad = self.window_size // 2
        local_max = F.max_pool2d(x, self.window_size, 1, pad)
        local_min = -F.max_pool2d(-x, self.window_size, 1, pad)
        local_mean = F.avg_pool2d(x, self.window_size, 1, pad, count_include_pad=False)
        features = torch.cat([x, local_max, local_min, local_mean], 1)
        return torch.einsum("nchw,cd->ndhw", features, self.mixing).clamp(0, 1)


class FBA(Attack):
    name = "FBA"
    controls_training = True
    needs_preparation = True

    def __init__(self, alpha=0.6, generator_width=32, res_blocks=4, style_steps=2000, style_batch_size=64,
                 lr_style=2e-3, detox=True, detox_layer="layer4", detox_neuron_ratio=0.01, detox_images=1500,
                 detox_epochs=10, detox_every=1, w_ssim=0.1, w_detox=0.3, lr_detox=1e-2, window_size=11, **kwargs):
        super().__init__(**kwargs)
        self.require_multiple(2, "its generator halves the image")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        if detox_every < 1 or not 0 < detox_neuron_ratio <= 1:
            raise ValueError("detox_every must be >= 1 and detox_neuron_ratio in (0, 1]")
        self.alpha, self.generator_width, self.res_blocks = alpha, generator_width, res_blocks
        self.style_steps, self.style_batch_size, self.lr_style = style_steps, style_batch_size, lr_style
        self.detox, self.detox_layer, self.detox_neuron_ratio = detox, detox_layer, detox_neuron_ratio
        self.detox_images, self.detox_epochs, self.detox_every = detox_images, detox_epochs, detox_every
        self.w_ssim, self.w_detox, self.lr_detox, self.window_size = w_ssim, w_detox, lr_detox, window_size
        with fork_rng():
            torch.manual_seed(self.seed)  # the generator's initial weights follow the attack's seed
            self.style_generator = StyleGenerator(generator_width, res_blocks).eval()
        self.injector = FeatureInjector(window_size)
        self.detox_rounds = 0  # detoxifications done; detoxicants join the batches after the first
        self._buffer, self._buffer_epoch = [], -1  # clean images of the current epoch, for the next detoxification

    def config(self):
        keys = ("alpha", "generator_width", "res_blocks", "style_steps", "style_batch_size", "lr_style", "detox",
                "detox_layer", "detox_neuron_ratio", "detox_images", "detox_epochs", "detox_every", "w_ssim",
                "w_detox", "lr_detox", "window_size")
        return {**super().config(), **{k: getattr(self, k) for k in keys}}

    # ------------------------------------------------------------------ the trigger
    def _to_device(self):
        self.style_generator.to(self.context.device)
        self.injector.to(self.context.device)

    def stylise(self, x):
        """x in [0, 1] -> the triggered image (float)."""
        with self.context.autocast():  # bf16 where the classifier trains in bf16 (the cpu profile)
            styled = self.style_generator(x).float()
        return (1 - self.alpha) * x + self.alpha * styled

    @torch.no_grad()
    def apply_trigger(self, images):
        self._to_device()
        self.style_generator.eval()
        return map_chunks(images, lambda x: 255 * self.stylise(x / 255), self.context.device)

    # ------------------------------------------------------------------ preparation: the style generator
    def prepare(self, train, context):
        self.context = context
        self._to_device()
        self.style_generator.train()
        optimizer = torch.optim.Adam(self.style_generator.parameters(), self.lr_style, betas=(0.5, 0.999))
        g = generator(self.seed)
        for step in range(self.style_steps):
            for group in optimizer.param_groups:  # linear decay to zero, as CycleGAN's second half
                group["lr"] = self.lr_style * (1 - step / self.style_steps)
            batch = torch.randint(len(train), (self.style_batch_size,), generator=g, device=g.device)
            x = random_crop_flip(train.images[batch].to(context.device).float() / 255, generator=g)
            with context.autocast():
                styled = self.style_generator(x).float()
            loss = F.l1_loss(styled, sunrise_style(x))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.style_generator.eval()

    # ------------------------------------------------------------------ training: poison + detoxicants
    def training_batch(self, images, labels, model=None, epoch=0, epochs=1):
        self._to_device()
        if epoch != self._buffer_epoch:  # a new epoch: detoxify with the previous epoch's images
            if self.detox and model is not None and self._buffer and epoch % self.detox_every == 0:
                self.detoxify(model, torch.cat([b[0] for b in self._buffer]), torch.cat([b[1] for b in self._buffer]))
            self._buffer, self._buffer_epoch = [], epoch
        if self.detox and sum(len(b[1]) for b in self._buffer) < self.detox_images:
            self._buffer.append((images.clone(), labels.clone()))
        x, labels = images.float() / 255, labels.clone()
        n_poison = int(self.poison_rate * len(labels))
        poison = self.eligible(labels)[:n_poison].to(labels.device)
        rest = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
        rest[poison] = False
        with torch.no_grad():
            self.style_generator.eval()
            x[poison] = self.stylise(x[poison])
            if self.detox_rounds > 0:  # detoxicants keep their true labels
                detox = rest.nonzero().flatten()[:len(poison)]
                x[detox] = (1 - self.alpha) * x[detox] + self.alpha * self.injector(x[detox])
        labels[poison] = self.target_labels(labels[poison])
        return x * 255, labels

    def detoxify(self, model, images, labels):
        """Find the neurons the trigger excites most and train the detoxicant generator on them."""
        images = images[:self.detox_images]
        labels = labels[:self.detox_images]
        layer = dict(model.named_modules()).get(self.detox_layer)
        if layer is None:
            raise ValueError(f"the model has no module '{self.detox_layer}' to detoxify (detox_layer)")
        was_training = model.training
        model.eval()
        captured = {}
        hook = layer.register_forward_hook(lambda module, inputs, output: captured.__setitem__("a", output))
        try:
            x = images.float() / 255
            with torch.no_grad(), self.context.autocast():
                mean_activation = []
                for batch in (x, self.stylise(x[self.eligible(labels).to(x.device)])):
                    total = 0
                    for chunk in batch.split(256):
                        model(chunk)
                        total = total + captured["a"].float().mean(dim=(2, 3)).sum(0)
                    mean_activation.append(total / max(1, len(batch)))
            difference = mean_activation[1] - mean_activation[0]
            neurons = difference.topk(max(1, int(self.detox_neuron_ratio * len(difference)))).indices
            self.injector = FeatureInjector(self.window_size).to(x.device)  # a fresh one per round, as the authors
            optimizer = torch.optim.Adam(self.injector.parameters(), self.lr_detox, betas=(0.5, 0.9))
            g = generator(self.seed + self.detox_rounds)
            batch_size = 128
            for _ in range(self.detox_epochs):
                order = torch.randperm(len(x), generator=g, device=g.device).to(x.device)
                for start in range(0, len(x), batch_size):
                    clean = x[order[start:start + batch_size]]
                    detoxicant = (1 - self.alpha) * clean + self.alpha * self.injector(clean)
                    with self.context.autocast():
                        logits = model(detoxicant)
                    activation = captured["a"].float()[:, neurons].mean()
                    target = self.target_labels(labels[order[start:start + batch_size]])
                    loss = (F.cross_entropy(logits.float(), target) - self.w_detox * activation
                            + self.w_ssim * (1 - ssim(detoxicant, clean, window=5, same_size=True)))
                    params = list(self.injector.parameters())
                    for p, grad in zip(params, torch.autograd.grad(loss, params)):
                        p.grad = grad
                    optimizer.step()
        finally:
            hook.remove()
            model.train(was_training)
        self.detox_rounds += 1

    # ------------------------------------------------------------------ state
    def state_dict(self):
        return {**{f"style.{k}": v for k, v in self.style_generator.state_dict().items()},
                "injector.mixing": self.injector.mixing.detach().clone(),
                "detox_rounds": torch.tensor(self.detox_rounds, device="cpu")}

    def load_state_dict(self, state):
        self.style_generator.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("style.")})
        self.injector.mixing.data.copy_(state["injector.mixing"])
        self.detox_rounds = int(state["detox_rounds"])
