"""FIP: Fisher Information guided Purification.
Karim, Arafat, Rakin, Guo, Rahnavard, "Fisher Information guided Purification against
Backdoor Attacks", ACM CCS 2024 (arXiv 2409.00863).

A backdoored model sits in a sharp minimum; FIP fine-tunes all weights on the clean set
towards a smooth one (a small Fisher trace) while a Fisher-weighted pull towards the
starting weights theta0 keeps what the model knows about clean data:

    min_theta  E_(x,y)~clean CE(f_theta(aug(x)), y)
               + eta_F * tr F(theta)                                  (backdoor suppressor)
               + eta_r / 2 * sum_i Fbar_ii * (theta_i - theta0_i)^2     (clean-accuracy retainer)

    F(theta) = E_(x,y) [g g^T],  g = grad_theta log p_theta(y | x)  (empirical Fisher, clean labels)
    tr F     = E_(x,y) ||g||^2   (squared per-sample gradient norm, averaged)
    Fbar_ii  = E_(x,y) g_i^2 at theta0: computed once, exactly, one clean image at a time, in eval
               mode (BN on its running statistics) and without augmentation.

Near a minimum F approximates the loss Hessian and tr F bounds its largest eigenvalue, the
sharpness the paper measures (its Table 6).
(Beyond its abstract the paper's text was not available to us; the two regularisers' forms
follow the abstract, the released regulariser (an EWC-style weight / 2 * sum F (theta -
theta0)^2) and the task brief.)

The trace estimator (``fisher_trace``): with Rademacher signs s_i on a batch of B samples and
G = grad_theta sum_i s_i log p(y_i | x_i), E_s ||G||^2 = sum_i ||g_i||^2 (the cross terms have
E[s_i s_j] = 0), so ||G||^2 / B is an unbiased estimate of the batch's tr F.  It costs one
backward pass with create_graph and, for its gradient, one double backward: no per-sample
loop (a loop over 128 samples per step would cost ~100 backward passes).  Measured on two
busy CPU cores (bf16, width-0.25 PreAct-ResNet-18) a step costs ~5-8x a plain fine-tuning
step, mostly the double backward of BatchNorm and ReLU; ``trace_every=5`` (the released
code's cadence) cuts that ~3x.  torch.compile cannot take a double backward; ``compile=True``
instead replays each whole step as one CUDA graph (``Defense.captured``: the step's thousands of
launches at once), the random signs drawn outside it.

Defaults: the authors' released code (src/Remove_Backdoor_FIP.py, src/Regularizer.py) where
the paper is silent: SGD lr 0.005, momentum 0.95, no weight decay, constant lr, 2000 steps
of 128 images drawn with replacement, crop + flip, the network in train mode.
eta_F = 0.005, the authors' advice ("0.005 or less"; the script's --reg_F default is 0.5).
eta_r = 5, the released regulariser's weight (its loss is weight / 2 * sum F (theta - theta0)^2).

Differences from the released code, which follow the paper's intent:
- Its "trace" (Regularizer.get_trace_loss) sums, over 20 Gaussian v, the running partial
  sums of <grad mean log p(y|x), v> layer by layer (its append sits inside the layer loop),
  divided by 20: a random linear functional of the gradient with mean zero, not tr F; and it
  takes log_softmax(out)[:, target], a B x B matrix (each sample scored against every label
  in the batch).  Here: the estimator above.  (Remove_Backdoor_FIP.py also defines an unused
  get_trace_loss that is a Hutchinson estimate of the Hessian's trace, 10 Gaussian probes.)
  It adds the term every 5th step only; ``trace_every=5`` reproduces that cadence, the
  default 1 is the paper's objective.
- Its retainer is computed but commented out of the loss, with F estimated as the square of
  the gradient of the mean log-likelihood (not the mean of per-sample squares), in train
  mode (which moves the BN running statistics before purification).  Here it is in the loss,
  with the exact per-sample diagonal, in eval mode.
"""
import contextlib

import torch
import torch.nn.functional as F

from ..devices import generator
from .base import Defense, count_trainable

DEFAULTS = dict(steps=2000, batch_size=128, lr=0.005, momentum=0.95,
                trace_weight=0.005,  # eta_F
                retain_weight=5.0,   # eta_r
                trace_every=1)       # the released code: 5


def rademacher(n, generator, device):
    """n random signs, +-1.0."""
    return torch.randint(0, 2, (n,), generator=generator, device=device).float() * 2 - 1


def _signed_trace(log_likelihoods, params, signs, create_graph=False):
    """||grad sum_i s_i l_i||^2 / B averaged over the rows of ``signs`` (one draw of Rademacher signs each)."""
    estimates = []
    for probe in signs:
        grads = torch.autograd.grad((probe.to(log_likelihoods) * log_likelihoods).sum(), params,
                                    create_graph=create_graph, retain_graph=True)
        # one flat vector: a few operations (and as many in the double backward) however many parameters
        estimates.append(torch.cat([g.flatten() for g in grads]).float().square().sum() / len(log_likelihoods))
    return torch.stack(estimates).mean()


def fisher_trace(model, x, y=None, params=None, probes=1, create_graph=False, generator=None):
    """Unbiased estimate of tr F = mean_i ||grad_params log p(y_i | x_i)||^2 on the batch (x, y).

    ``y`` given: the empirical Fisher (the labels of the data).  ``y=None``: the true Fisher,
    a label drawn from the model's own prediction for every sample and probe.
    ``create_graph=True`` makes the estimate differentiable (for use as a penalty)."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    log_probs = F.log_softmax(model(x).float(), dim=1)
    if y is not None:
        signs = torch.stack([rademacher(len(x), generator, log_probs.device) for _ in range(probes)])
        return _signed_trace(log_probs.gather(1, y[:, None]).squeeze(1), params, signs, create_graph)
    estimates = []
    for _ in range(probes):
        sampled = torch.multinomial(log_probs.detach().exp(), 1, generator=generator)
        signs = rademacher(len(x), generator, log_probs.device)[None]
        estimates.append(_signed_trace(log_probs.gather(1, sampled).squeeze(1), params, signs, create_graph))
    return torch.stack(estimates).mean()


def fisher_diagonal(model, x, y, params, autocast=None):
    """Exact empirical-Fisher diagonal E_n[(d log p(y_n | x_n) / d theta)^2] over the batch, one
    sample at a time, in eval mode (BN on running statistics, so each gradient is the sample's own)."""
    was_training = model.training
    model.eval()
    fisher = [torch.zeros_like(p) for p in params]
    for xn, yn in zip(x, y):
        with autocast or contextlib.nullcontext():
            logits = model(xn[None])
        grads = torch.autograd.grad(F.log_softmax(logits.float(), dim=1)[0, yn], params)
        torch._foreach_addcmul_(fisher, grads, grads, value=1.0 / len(y))  # f += g^2 / N, all layers at once
    model.train(was_training)
    return fisher


def add_retainer_gradient(params, fisher, start, weight):
    """p.grad += weight * Fbar * (p - p0): the gradient of weight / 2 * sum_i Fbar_ii (theta_i - theta0_i)^2,
    added in three ``_foreach_`` operations for all the parameters (through autograd it costs a few
    operations per parameter, forward and backward, every step)."""
    for p in params:  # a parameter the loss did not reach still feels the pull back
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    drift = torch._foreach_sub(params, start)
    torch._foreach_mul_(drift, fisher)
    torch._foreach_add_([p.grad for p in params], drift, alpha=weight)


class FIP(Defense):
    name = "FIP"
    DEFAULTS = DEFAULTS

    def run(self, model, clean):
        params = [p for p in model.parameters() if p.requires_grad]
        self.stats["trainable_params"] = count_trainable(params)
        return self.fine_tune(model, params, clean)

    def fine_tune(self, model, params, clean):
        """Minimise the FIP objective over ``params`` (all weights here, the spectral shifts in Fast FIP)."""
        c = self.config
        images = clean.images.to(self.device).float().div(255)
        fisher = fisher_diagonal(model, images, clean.labels.to(self.device), params, self.autocast())
        start = [p.detach().clone() for p in params]
        optimizer = torch.optim.SGD(params, lr=c["lr"], momentum=c["momentum"], weight_decay=0.0)
        g = generator(self.seed + 1, self.device)

        def step(x, y, signs=None):  # one step; with ``signs``, the trace penalty too (returned)
            with self.autocast():
                logits = model(x)
            log_likelihoods = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
            loss = -log_likelihoods.mean()
            trace = None
            if signs is not None:
                trace = _signed_trace(log_likelihoods, params, signs, create_graph=True)
                loss = loss + c["trace_weight"] * trace
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c["retain_weight"] > 0:  # the retainer's gradient, eta_r * Fbar * (theta - theta0), in closed form
                add_retainer_gradient(params, fisher, start, c["retain_weight"])
            optimizer.step()
            return None if trace is None else trace.detach()

        # the steps with and without the penalty as two captured steps (each one path): see Defense.captured
        traced_step, plain_step = self.captured(step), self.captured(step)
        traces = []
        model.train()
        batches = self.batches(clean, c["batch_size"], c["steps"])
        for step_index, (x, y) in self.steps(batches, c["steps"], model=model):
            if c["trace_weight"] > 0 and step_index % c["trace_every"] == 0:
                traces.append(traced_step(x, y, rademacher(len(y), g, x.device)[None]))
            else:
                plain_step(x, y)
        if traces:  # the Fisher-trace estimate early and late in the run: did it fall?
            traces = torch.stack(traces).tolist()  # one host sync, after the loop
            k = max(1, len(traces) // 10)
            self.stats["fisher_trace_first"] = round(sum(traces[:k]) / k, 4)
            self.stats["fisher_trace_last"] = round(sum(traces[-k:]) / k, 4)
        return model
