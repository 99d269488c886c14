"""NGF: natural-gradient fine-tuning of a single layer.
Karim, Al Arafat, Khalid, Guo, Rahnavard, "Efficient Backdoor Removal Through Natural
Gradient Fine-tuning", arXiv 2306.17441 (2023); earlier "In Search of Smooth Minima for
Purifying Backdoor in Deep Neural Networks", ICLR 2023 submission (OpenReview xWFguIF_hG).

What the paper states (abstract, both versions; its body text was not retrievable here): the
backdoor sits in a sharp minimum; fine-tune ONE layer with a loss-surface-geometry-aware
(natural-gradient) optimiser on a few clean images, plus a clean-data-distribution-aware
regulariser built from the Fisher information.  Everything else is from the authors' anonymous
review-time code (github kr-anonymous/ngf-animus, May-Aug 2022: natural_gradient_optimizer.py,
Purification_NGF.py and its latest variant Purification_NGF_randomly_initalized.py).

The layer is the classifier (the model's last nn.Linear; the released optimiser preconditions
only the modules after index 66 of their ResNet-18, "use 66 for linear layer"), or any
nn.Linear / nn.Conv2d named by ``layer``.  Its weight is first RE-INITIALISED (Xavier uniform,
bias kept), as the latest released script does (``reinit``: in place, clean data hardly moves
the weights that read features only triggered inputs activate).  Every other parameter AND buffer
stays bit-identical: the network runs in eval mode, BatchNorm statistics frozen.  Objective:

    min_W  E_(x,y)~D_clean CE(f_W(aug(x)), y)  +  eta / 2 * sum_j F_j (W_j - W0_j)^2,
    F_j = mean over the clean set of (d log p(y|x) / d W_j)^2 at the suspect weights W0,

the clean-distribution-aware regulariser in the EWC form of the same authors' CDA_Regularizer
(src/Regularizer.py of their FIP repository); F and W0 are taken before the re-initialisation.
The optimiser is the released one, K-FAC with EKFAC's eigenvalue correction: A = E[a a^T]
(layer inputs, 1 appended for the bias) and G = E[g g^T] (output gradients of log p(y~|x), y~
sampled from the model: the true Fisher) are running averages (decay 0.95, from the identity),
refreshed every 10 steps and eigendecomposed every 100; the eigenvalues S = d_G d_A^T are then
corrected every 10 steps towards E[(Q_G^T grad_n Q_A)^2] (per-sample gradients, same decay), and

    V = Q_G [ (Q_G^T D Q_A) / (S + damping) ] Q_A^T,   nu = min(1, sqrt(kl_clip / (lr^2 <V, D>))),

nu V (+ weight decay 1e-4 * W from step 200 on, as released) is applied by SGD with momentum
0.9 at a constant lr 0.01 (the latest script has its step schedule switched off).
Defaults, all from the released scripts: 500 steps of 128 augmented images (crop + flip) drawn
with replacement from the clean set (their 1% of CIFAR-10), lr 0.01, momentum 0.9, stat decay
0.95, damping 1e-3, KL clip 1e-2, statistics every 10 steps, eigendecompositions every 100,
weight decay 1e-4; eta 5 is CDA_Regularizer's default weight (the NGF code has no regulariser).
Differences from the released code: it also SGD-updates every other layer (the optimiser is
built on model.parameters()) and runs BN in train mode; here only the chosen layer moves, BN
frozen.  Its EKFAC correction projects with Q_G grad Q_A^T (inherited from the alecwangcq
K-FAC code); here with Q_G^T grad Q_A, the eigenbasis the update uses.  Its first script
(no re-initialisation) used MultiStepLR, stepped before each 100-step chunk: 1e-3 for 200 steps,
then 1e-4.  The regulariser's Fisher is per-sample squared gradients (EWC), not the square of
the batch-mean gradient that CDA_Regularizer computes.
Limitation seen here (cpu-profile BadNets, PreActResNet-18 x0.25): triggered images' penultimate
features sit in the target class's cluster, so even a classifier refitted from scratch on clean
features keeps ASR near 90-100%; no classifier-only method, NGF included, removes that backdoor.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import generator
from ..layers import classifier_of, frozen
from .base import Defense

DEFAULTS = {"steps": 500, "batch_size": 128, "layer": "classifier", "reinit": True, "lr": 0.01, "momentum": 0.9,
            "stat_decay": 0.95, "damping": 1e-3, "kl_clip": 1e-2, "weight_decay": 1e-4, "cov_every": 10,
            "scale_every": 10, "inverse_every": 100, "fisher_reg": 5.0}


def find_layer(model, layer="classifier"):
    """(name, module) of the layer to fine-tune: "classifier" is the last nn.Linear."""
    if layer == "classifier":
        classifier = classifier_of(model)
        return next(n for n, m in model.named_modules() if m is classifier), classifier
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


def eigenbasis_direction(grad, q_a, q_g, scale, damping):
    """Q_G [(Q_G^T grad Q_A) / (scale + damping)] Q_A^T: the preconditioned gradient."""
    return q_g @ ((q_g.T @ grad @ q_a) / (scale + damping)) @ q_a.T


def kfac_direction(grad, a_eig, g_eig, damping):
    """(G (x) A + damping I)^-1 vec(grad), computed in the eigenbases of A and G."""
    (d_a, q_a), (d_g, q_g) = a_eig, g_eig
    return eigenbasis_direction(grad, q_a, q_g, d_g[:, None] * d_a[None, :], damping)


def eigenbasis_second_moment(a, g, q_a, q_g, chunk=8):
    """EKFAC's corrected eigenvalues: mean over samples of (Q_G^T grad_n Q_A)^2, where the
    per-sample gradient grad_n is the sum over positions of g a^T (a: [N, P, in], g: [N, P, out])."""
    total = 0.0
    for i in range(0, len(a), chunk):
        per_sample = torch.einsum("npo,npk->nok", g[i:i + chunk], a[i:i + chunk])
        total = total + (q_g.T @ per_sample @ q_a).pow(2).sum(0)
    return total / len(a)


def layer_fisher_diagonal(model, layer, captured, clean, batch_size, device, chunk=8):
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
        params = [p for p in layer.parameters(recurse=False)]
        self.stats.update(layer=layer_name, trainable_params=sum(p.numel() for p in params))
        with frozen(model, trainable=params):
            nus = self.fine_tune(model, layer, params, clean)
        self.stats["kl_clip_scale_mean"] = round(torch.stack(nus).mean().item(), 4) if nus else 1.0
        return model

    def fine_tune(self, model, layer, params, clean):
        """The released optimiser on ``layer`` (everything else frozen); returns the KL-clip scales."""
        c = self.config
        model.eval()  # the frozen part (BN running statistics included) must not move

        captured = {}
        hook = layer.register_forward_hook(lambda m, inputs, output: captured.update({"in": inputs[0], "out": output}))
        w0 = weight_matrix(layer).detach().clone()  # the regulariser's anchor and Fisher: the suspect weights
        fisher = layer_fisher_diagonal(model, layer, captured, clean, c["batch_size"], self.device)
        if c["reinit"]:
            with torch.no_grad():
                nn.init.xavier_uniform_(layer.weight)
        optimizer = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"])
        g_sample = generator(self.seed + 1, self.device)
        decay, cov_a, cov_g, nus = c["stat_decay"], None, None, []
        batches = self.batches(clean, c["batch_size"], c["steps"])
        for step, (x, y) in self.steps(batches, c["steps"], model=model):
            with self.autocast():
                logits = model(x).float()
            loss = F.cross_entropy(logits, y) + c["fisher_reg"] / 2 * (fisher * (weight_matrix(layer) - w0) ** 2).sum()

            refresh_cov, refresh_scale = step % c["cov_every"] == 0, step > 0 and step % c["scale_every"] == 0
            if refresh_cov or refresh_scale:  # output gradients for labels sampled from the model (true Fisher)
                sampled = torch.multinomial(logits.detach().softmax(1), 1, generator=g_sample).squeeze(1)
                (g,) = torch.autograd.grad(F.cross_entropy(logits, sampled, reduction="sum"), captured["out"],
                                           retain_graph=True)
                a, g = input_rows(layer, captured["in"].detach().float()), output_rows(layer, g.float())
            if refresh_cov:
                new_a = torch.einsum("npk,npl->kl", a, a) / (a.shape[0] * a.shape[1])
                new_g = torch.einsum("npo,npq->oq", g, g) / g.shape[0]
                if cov_a is None:  # running averages start from the identity, as in the reference code
                    cov_a, cov_g = torch.eye(len(new_a), device=a.device), torch.eye(len(new_g), device=a.device)
                cov_a = decay * cov_a + (1 - decay) * new_a
                cov_g = decay * cov_g + (1 - decay) * new_g
            if step % c["inverse_every"] == 0:  # new eigenbases; their eigenvalues restart from K-FAC's
                (d_a, q_a), (d_g, q_g) = eig(cov_a), eig(cov_g)
                scale = d_g[:, None] * d_a[None, :]
            if refresh_scale:  # EKFAC: eigenvalues re-estimated from per-sample gradients in the eigenbasis
                scale = decay * scale + (1 - decay) * eigenbasis_second_moment(a, g, q_a, q_g)

            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            grad = weight_matrix(layer, use_grad=True)
            v = eigenbasis_direction(grad, q_a, q_g, scale, c["damping"])
            vg = c["lr"] ** 2 * (v * grad).sum()  # on the device: no host sync per step
            nu = torch.where(vg > 0, (c["kl_clip"] / vg.clamp(min=1e-30)).sqrt().clamp(max=1.0), 1.0)
            update = nu * v
            if step >= 20 * c["cov_every"]:  # the released optimiser starts its weight decay after 20 statistics updates
                update = update + c["weight_decay"] * weight_matrix(layer).detach()
            set_grad_from_matrix(layer, update)
            nus.append(nu)
            optimizer.step()

        hook.remove()
        self.stats["distance_from_start"] = round((weight_matrix(layer).detach() - w0).norm().item(), 4)
        return nus

