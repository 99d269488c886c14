"""ISSBA (Li, Li, Wu, Li, He & Lyu, "Invisible Backdoor Attack with
Sample-Specific Triggers", ICCV 2021).

The trigger is an invisible, image-dependent residual: a StegaStamp-style
encoder E hides a fixed secret bit string s in each image, x' = x + E(x, s),
and poisoned images are relabelled to the target (all-to-all: y -> y + 1).
E is trained here, with a decoder D that reads the bits back, on the clean
attack-training images (nothing is downloaded):
    min_{E, D}  lambda(t) [ ||x' - x||^2 + beta (1 - SSIM(x', x)) ] + BCE(D(q(x')), b),
    x' = clip(x + E(x, b), 0, 1),  b ~ Bernoulli(1/2)^L, random per image,
q rounding to 8 bits (straight-through: the bits must survive uint8 images).
lambda(t) is 0 until the training bit accuracy passes 0.9, then ramps
linearly to ``image_weight`` over a fifth of the steps (BackdoorBench's
StegaStamp schedule: bits first, then invisibility).  Training on random
secrets, as StegaStamp does, is what makes the residual depend on the image;
with the one fixed secret D could output s whatever its input.  Poisoning
uses the fixed s, L = ``bits``, drawn from the attack seed.
SSIM (beta = ``ssim_weight``) stands in for StegaStamp's LPIPS term (LPIPS
needs pretrained weights, which we do not download); the critic is dropped.
E: a small U-Net (3 scales, ``width`` channels at full resolution; the secret
through a linear layer to a 16x16x3 map, upsampled to the image, as in StegaStamp); its
output is bounded, E = m tanh(raw / m), m = ``max_delta`` (0..255 units): a
deviation that keeps the trigger small when the budget is too short for the
image loss to act (the paper relies on long training; its ImageNet triggers,
PSNR 27 dB, are ~11 levels RMS).  D: a strided CNN with a linear head.
``info`` (and ``state_dict``) hold D's bit accuracy on poisoned 8-bit images
(fixed s) and their mean |x' - x| in 0..255 units, on 512 training images.

Defaults: 100 bits, L2 weight 10, batch 64 (BackdoorBench's StegaStamp
settings; BackdoorBench trains 20 epochs, ~15k steps, hence
``encoder_steps=15000``), Adam lr 1e-3 (BackdoorBench: 1e-4 for its larger
StegaStamp; 1e-3 is what learns in short runs here), SSIM weight 0.1 (at 1
the image loss wiped the residual out on smooth images), 10% poison, target 0.
The cpu profile shrinks ``encoder_steps``, ``width`` and ``batch_size``
(a couple of minutes).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..devices import fork_rng, generator
from .base import Attack, ssim


def conv(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))


class Encoder(nn.Module):
    """Small U-Net: (image in [0, 1], bits) -> residual in [0, 1] units."""

    def __init__(self, bits=100, width=32, max_delta=16.0):
        super().__init__()
        c, self.max_delta = width, max_delta / 255
        self.secret = nn.Linear(bits, 3 * 16 * 16)
        self.down0 = nn.Sequential(conv(6, c), conv(c, c))             # 32x32
        self.down1 = nn.Sequential(conv(c, 2 * c, 2), conv(2 * c, 2 * c))  # 16x16
        self.down2 = nn.Sequential(conv(2 * c, 4 * c, 2), conv(4 * c, 4 * c))  # 8x8
        self.up1, self.merge1 = conv(4 * c, 2 * c), conv(4 * c, 2 * c)
        self.up0, self.merge0 = conv(2 * c, c), conv(2 * c + 6, c)
        self.residual = nn.Conv2d(c, 3, 1)

    def forward(self, images, bits):
        secret = F.relu(self.secret(2 * bits - 1)).view(-1, 3, 16, 16)
        inputs = torch.cat([images - 0.5, F.interpolate(secret, size=images.shape[-2:])], 1)  # x2 at 32x32
        d0 = self.down0(inputs)
        d1 = self.down1(d0)
        d2 = self.down2(d1)
        u1 = self.merge1(torch.cat([d1, self.up1(F.interpolate(d2, scale_factor=2))], 1))
        u0 = self.merge0(torch.cat([d0, self.up0(F.interpolate(u1, scale_factor=2)), inputs], 1))
        return self.max_delta * torch.tanh(self.residual(u0) / self.max_delta)


class Decoder(nn.Module):
    def __init__(self, bits=100, width=32):
        super().__init__()
        c = width
        self.features = nn.Sequential(conv(3, c, 2), conv(c, 2 * c, 2), conv(2 * c, 2 * c), conv(2 * c, 4 * c, 2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * c * 16, 512), nn.ReLU(inplace=True), nn.Linear(512, bits))

    def forward(self, images):
        # features are 4x4 on 32x32 images; pooled to 4x4 on larger ones (the identity at 32)
        return self.head(F.adaptive_avg_pool2d(self.features(images - 0.5), 4))


def quantise(x):
    """Round to 8 bits in the forward pass, identity in the backward pass."""
    return x + ((x * 255).round() / 255 - x).detach()


class ISSBA(Attack):
    name = "ISSBA"
    needs_preparation = True

    def __init__(self, bits=100, width=32, max_delta=16.0, encoder_steps=15000, batch_size=64, lr=1e-3,
                 image_weight=10.0, ssim_weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.require_multiple(4, "its encoder halves the image twice")
        if bits < 1 or width < 1 or encoder_steps < 0 or batch_size < 1:
            raise ValueError("bits, width and batch_size must be >= 1, encoder_steps >= 0")
        self.bits, self.width, self.encoder_steps, self.batch_size = bits, width, encoder_steps, batch_size
        self.max_delta = float(max_delta)
        self.lr, self.image_weight, self.ssim_weight = lr, float(image_weight), float(ssim_weight)
        g = generator(self.seed + 7_919)  # the secret follows the attack seed
        self.secret = torch.randint(0, 2, (bits,), generator=g, device=g.device).float()
        self.encoder, self.decoder = Encoder(bits, width, max_delta), Decoder(bits, width)
        self.prepared, self.info = False, {}

    def config(self):
        return {**super().config(), "bits": self.bits, "width": self.width, "max_delta": self.max_delta,
                "encoder_steps": self.encoder_steps, "batch_size": self.batch_size, "lr": self.lr,
                "image_weight": self.image_weight, "ssim_weight": self.ssim_weight}

    def prepare(self, train, context):
        self.context = context
        device = context.device
        g = generator(self.seed)
        with fork_rng():
            torch.manual_seed(self.seed)  # network initialisation follows the attack seed
            self.encoder = Encoder(self.bits, self.width, self.max_delta).to(device)
            self.decoder = Decoder(self.bits, self.width).to(device)
        optimizer = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=self.lr)
        # the image loss is switched on once the bits are read back (training bit accuracy > 0.9), then ramped up
        # linearly over a fifth of the steps (BackdoorBench's StegaStamp schedule: await 0.9, then ramp)
        start, ramp = self.encoder_steps, max(1, self.encoder_steps // 5)
        for step in range(self.encoder_steps):
            batch = torch.randint(0, len(train), (self.batch_size,), generator=g, device=g.device)
            x = train.images[batch].to(device).float() / 255
            bits = torch.randint(0, 2, (self.batch_size, self.bits), generator=g, device=g.device).float().to(device)
            with context.autocast():
                poisoned = (x + self.encoder(x, bits)).clamp(0, 1)
                logits = self.decoder(quantise(poisoned))
            poisoned, logits = poisoned.float(), logits.float()
            image_loss = F.mse_loss(poisoned, x) + self.ssim_weight * (1 - ssim(poisoned, x))
            weight = self.image_weight * min(1.0, max(0.0, (step - start) / ramp))
            loss = weight * image_loss + F.binary_cross_entropy_with_logits(logits, bits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step < start and ((logits > 0).float() == bits).float().mean() > 0.9:
                start = step
        self.prepared = True
        self.info = self.measure(train.images[torch.randperm(len(train), generator=g, device=g.device)[:512]])

    @torch.no_grad()
    def measure(self, images):
        """Decoder bit accuracy (fixed secret, 8-bit images) and mean |x' - x| (0..255) on ``images``."""
        poisoned = self.apply_trigger(images)
        device = self.context.device
        self.decoder.to(device).eval()
        logits = torch.cat([self.decoder(b.to(device).float() / 255).cpu() for b in poisoned.split(256)])
        bit_accuracy = ((logits > 0).float() == self.secret).float().mean().item()
        mean_abs_delta = (poisoned.float() - images.float()).abs().mean().item()
        return {"bit_accuracy": round(bit_accuracy, 4), "mean_abs_delta": round(mean_abs_delta, 4)}

    @torch.no_grad()
    def residuals(self, images):
        """E(x, s) in 0..255 units (float, before clipping and rounding)."""
        if not self.prepared:
            raise RuntimeError("ISSBA's encoder is not trained yet: call prepare() or load_state_dict()")
        device = self.context.device
        self.encoder.to(device).eval()
        secret = self.secret.to(device)
        out = [255 * self.encoder(b.to(device).float() / 255, secret.expand(len(b), -1)).to(images.device)
               for b in images.split(256)]
        return torch.cat(out) if out else torch.zeros(images.shape, device=images.device)

    def apply_trigger(self, images):
        return (images.float() + self.residuals(images)).round().clamp(0, 255).to(torch.uint8)

    def state_dict(self):
        if not self.prepared:
            return {}
        return {**{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()},
                **{f"decoder.{k}": v for k, v in self.decoder.state_dict().items()},
                "secret": self.secret, "bit_accuracy": torch.tensor(self.info["bit_accuracy"], device="cpu"),
                "mean_abs_delta": torch.tensor(self.info["mean_abs_delta"], device="cpu")}

    def load_state_dict(self, state):
        self.encoder = Encoder(self.bits, self.width, self.max_delta)
        self.decoder = Decoder(self.bits, self.width)
        self.encoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("encoder.")})
        self.decoder.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("decoder.")})
        self.secret = state["secret"].float()
        self.info = {k: round(state[k].item(), 4) for k in ("bit_accuracy", "mean_abs_delta")}
        self.prepared = True
