"""NGF: natural-gradient fine-tuning of a single layer.
Karim, Al Arafat, Khalid, Guo, Rahnavard, "Efficient Backdoor Removal Through Natural
Gradient Fine-tuning", arXiv 2306.17441 (2023).

Only one layer W is trained: the classifier by default (the model's last nn.Linear),
or any nn.Linear / nn.Conv2d named by ``layer``, e.g. "layer4.1.conv2".  Every other
parameter AND buffer stays bit-identical: the whole network runs in eval mode, so
BatchNorm normalises with, and never updates, its running statistics.  Objective:

    min_W  E_(x,y)~D_clean CE(f_W(aug(x)), y)  +  eta / 2 * sum_j F_j (W_j - W0_j)^2,
    F_j = mean over the clean set of (d log p(y|x) / d W_j)^2 at the suspect weights W0,

the paper's clean-distribution-aware regulariser in the form the authors' released
CDA_Regularizer implements: an EWC-style pull towards W0 weighted by the diagonal Fisher
of the clean data (computed once, un-augmented images, true labels).
It is minimised by K-FAC natural gradient.  With A = E[a a^T] (the layer's inputs, a 1
appended for the bias; for a conv the unfolded patches, averaged over positions) and
G = E[g g^T] (gradients of log p(y~|x) w.r.t. the layer's outputs, y~ sampled from the
model's own prediction: the true Fisher; for a conv summed over positions), each a
running average (decay 0.95, started from the identity), the gradient D (out x in
matrix, bias as the last column) becomes, in the factors' eigenbases,

    V = Q_G [ (Q_G^T D Q_A) / (d_G d_A^T + damping) ] Q_A^T  =  (G (x) A + damping I)^-1 vec(D),

scaled by nu = min(1, sqrt(kl_clip / (lr^2 <V, D>))) (KL clipping) and applied by SGD
with momentum; the learning rate follows a cosine to 0.

Defaults: 500 steps of 128 augmented images (crop + flip) drawn with replacement; the
K-FAC settings of the common PyTorch implementation (alecwangcq/KFAC-Pytorch, main.py),
lr 0.01 included: momentum 0.9, stat decay 0.95, damping 1e-3 (added to the product of
the factors' eigenvalues, as there), KL clip 1e-2, statistics every 10 steps,
eigendecompositions every 100; eta 5, the default weight of the authors' released
regulariser class (CDA_Regularizer, src/Regularizer.py of their FIP repository).  No
NGF-specific optimiser code is published; its lr is taken from the K-FAC script.
Differences from the authors' released code: it trains ALL layers with plain SGD and
lets BN running statistics move; here only the chosen layer moves, by natural gradient,
BN frozen.  Its Fisher is the square of the gradient of the batch-MEAN log-likelihood,
indexed as output[:, target] (an N x N block), which is small wherever the model has
converged; here it is the mean of per-sample squared gradients (EWC's diagonal Fisher).
K-FAC weight decay (3e-3 in the reference script) is not used: the regulariser is the
pull.  No EKFAC variant.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..progress import progress
from .base import Defense, clean_batches, cosine_lr

DEFAULTS = {"steps": 500, "batch_size": 128, "layer": "classifier", "lr": 0.01, "momentum": 0.9, "stat_decay": 0.95,
            "damping": 1e-3, "kl_clip": 1e-2, "cov_every": 10, "inverse_every": 100, "fisher_reg": 5.0}


def find_layer(model, layer="classifier"):
    """(name, module) of the layer to fine-tune: "classifier" is the last nn.Linear."""
    if layer == "classifier":
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("NGF: the model has no nn.Linear layer to use as the classifier")
        return linears[-1]
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"NGF: the model has no module named '{layer}'")
    module = modules[layer]
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ValueError(f"NGF: conv layer '{layer}' needs groups=1 and explicit zero padding")
    elif not isinstance(module, nn.Linear):
        raise TypeError(f"NGF fine-tunes an nn.Linear or nn.Conv2d layer; '{layer}' is {type(module).__name__}")
    return layer, module


def input_rows(layer, a):
    """The layer's inputs as [N, P, K] rows (P positions per sample: 1 for a Linear, the
    unfolded patches for a conv), with a 1 appended when the layer has a bias."""
    if isinstance(layer, nn.Conv2d):
        a = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride).transpose(1, 2)
    else:
        a = a.reshape(len(a), -1, a.shape[-1])
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
    return a


def output_rows(layer, g):
    """Gradients w.r.t. the layer's outputs as [N, P, out]."""
    return g.flatten(2).transpose(1, 2) if isinstance(layer, nn.Conv2d) else g.reshape(len(g), -1, g.shape[-1])


def weight_matrix(layer, use_grad=False):
    """The layer's parameters (or their gradients) as one out x in matrix, bias last."""
    w = layer.weight.grad if use_grad else layer.weight
    parts = [w.reshape(len(w), -1)]
    if layer.bias is not None:
        parts.append((layer.bias.grad if use_grad else layer.bias).reshape(-1, 1))
    return torch.cat(parts, 1)


def set_grad_from_matrix(layer, v):
    layer.weight.grad.copy_(v[:, :layer.weight[0].numel()].reshape(layer.weight.shape))
    if layer.bias is not None:
        layer.bias.grad.copy_(v[:, -1])


def eig(matrix, eps=1e-10):
    d, q = torch.linalg.eigh(matrix)
    return d * (d > eps), q  # tiny / negative round-off eigenvalues count as 0, as in the reference code


def kfac_direction(grad, a_eig, g_eig, damping):
    """(G (x) A + damping I)^-1 vec(grad), computed in the eigenbases of A and G."""
    (d_a, q_a), (d_g, q_g) = a_eig, g_eig
    return q_g @ ((q_g.T @ grad @ q_a) / (d_g[:, None] * d_a[None, :] + damping)) @ q_a.T


def fisher_diagonal(model, layer, captured, clean, batch_size, device, chunk=8):
    """Mean over the clean set of the squared per-sample gradients of log p(y|x) w.r.t. the
    layer (out x in matrix); per-sample gradient = sum over positions of g a^T."""
    total = 0.0
    for start in range(0, len(clean), batch_size):
        x = clean.images[start:start + batch_size].to(device).float().div_(255)
        y = clean.labels[start:start + batch_size].to(device)
        logits = model(x).float()
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), captured["out"])
        a, g = input_rows(layer, captured["in"].detach().float()), output_rows(layer, g.float())
        for i in range(0, len(a), chunk):
            total = total + torch.einsum("npo,npk->nok", g[i:i + chunk], a[i:i + chunk]).pow(2).sum(0)
    return total / len(clean)


class NGF(Defense):
    name = "NGF"
    DEFAULTS = DEFAULTS

    def run(self, model, clean):
        c = self.config
        layer_name, layer = find_layer(model, c["layer"])
        requires_grad = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        params = [p for p in layer.parameters(recurse=False)]
        for p in params:
            p.requires_grad_(True)
        self.stats.update(layer=layer_name, trainable_params=sum(p.numel() for p in params))
        model.eval()  # the frozen part (BN running statistics included) must not move

        captured = {}
        hook = layer.register_forward_hook(lambda m, inputs, output: captured.update({"in": inputs[0], "out": output}))
        w0 = weight_matrix(layer).detach().clone()
        fisher = fisher_diagonal(model, layer, captured, clean, c["batch_size"], self.device)
        optimizer = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"])
        g_sample = torch.Generator().manual_seed(self.seed + 1)
        decay, cov_a, cov_g, nus = c["stat_decay"], None, None, []
        batches = clean_batches(clean, c["batch_size"], c["steps"], self.device, self.seed)
        for step, (x, y) in enumerate(progress(batches, total=c["steps"], desc="NGF", enabled=self.progress)):
            lr = cosine_lr(step, c["steps"], c["lr"])
            with self.autocast():
                logits = model(x).float()
            loss = F.cross_entropy(logits, y) + c["fisher_reg"] / 2 * (fisher * (weight_matrix(layer) - w0) ** 2).sum()

            if step % c["cov_every"] == 0:  # K-FAC statistics, with labels sampled from the model (true Fisher)
                probs = logits.detach().softmax(1).cpu()
                sampled = torch.multinomial(probs, 1, generator=g_sample).squeeze(1).to(y.device)
                (g,) = torch.autograd.grad(F.cross_entropy(logits, sampled, reduction="sum"), captured["out"],
                                           retain_graph=True)
                a, g = input_rows(layer, captured["in"].detach().float()), output_rows(layer, g.float())
                new_a = torch.einsum("npk,npl->kl", a, a) / (a.shape[0] * a.shape[1])
                new_g = torch.einsum("npo,npq->oq", g, g) / g.shape[0]
                if cov_a is None:  # running averages start from the identity, as in the reference code
                    cov_a, cov_g = torch.eye(len(new_a), device=a.device), torch.eye(len(new_g), device=a.device)
                cov_a = decay * cov_a + (1 - decay) * new_a
                cov_g = decay * cov_g + (1 - decay) * new_g
            if step % c["inverse_every"] == 0:
                a_eig, g_eig = eig(cov_a), eig(cov_g)

            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            grad = weight_matrix(layer, use_grad=True)
            v = kfac_direction(grad, a_eig, g_eig, c["damping"])
            vg = lr ** 2 * (v * grad).sum().item()
            nu = min(1.0, math.sqrt(c["kl_clip"] / vg)) if vg > 0 else 1.0
            set_grad_from_matrix(layer, nu * v)
            nus.append(nu)
            optimizer.param_groups[0]["lr"] = lr
            optimizer.step()

        hook.remove()
        for p, flag in requires_grad.items():
            p.requires_grad_(flag)
        self.stats["kl_clip_scale_mean"] = round(sum(nus) / max(1, len(nus)), 4)
        self.stats["distance_from_start"] = round((weight_matrix(layer).detach() - w0).norm().item(), 4)
        return model
