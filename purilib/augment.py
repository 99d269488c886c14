"""Batched augmentation on tensors (random crop with 4-pixel zero padding +
horizontal flip), the standard CIFAR recipe, done on a whole batch at once on
whichever device holds it: far faster than per-image PIL transforms.  The
random numbers are drawn on the generator's device (see
:func:`purilib.devices.generator`): give one made where the batch is."""
import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, padding=4, generator=None) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    drawn_on = generator.device if generator is not None else x.device
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=drawn_on).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=drawn_on).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, generator=generator, device=drawn_on).to(x.device) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
