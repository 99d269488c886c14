"""Sharpness of the loss at a model: Hessian-vector products, the largest eigenvalue, the trace.

FIP (Karim et al., "Fisher Information guided Purification against Backdoor Attacks", CCS 2024)
measures a backdoored model's loss surface by the Hessian's largest eigenvalue lambda_max and its
trace (Table 6, Figure 1), as PyHessian does (Yao et al., "PyHessian: Neural Networks Through the
Lens of the Hessian", 2020):

- H v by double backward: the gradient of (grad L . v), never forming H;
- lambda_max by power iteration on H v (the eigenvalue of largest magnitude: for a trained
  network's loss that is the largest positive one), stopped when it changes by < ``tol`` relatively;
- tr(H) by Hutchinson's estimator E[v^T H v] over Rademacher vectors v, with its standard error;
- the eigenvalue density (FIP's Figure 1) by stochastic Lanczos quadrature (Ghorbani et al., ICML 2019):
  Lanczos from random unit vectors gives nodes and weights, broadened by Gaussians onto a grid.

L is the mean cross-entropy over a data set (all of it: full-batch, computed in chunks), the network
in eval mode (BN uses its running statistics), over every trainable parameter.  Which data is used
is the caller's choice and must be stated beside the numbers (``sharpness`` records it).  Two
protocols are named (``SHARPNESS_PROTOCOLS``; settings in a profile's ``sharpness``):

- "authors": as the FIP authors' ``Smoothness Analysis/hessian_analysis.py`` measures (PyHessian's
  defaults): one batch of 200 clean *training* images the model learned from, augmented once by their
  transform (crop with 1-pixel padding, flip), eval mode; power iteration and Hutchinson each up to
  100 steps, stopped when the estimate (Hutchinson: the running mean) changes by < 1e-3 relatively.
  Their batch is the first 200 of a fixed permutation; here 20 per class, seeded.
- "held-out": the full-batch loss over the defenses' clean set (the reserve the model never saw, not
  augmented), a fixed number of power iterations and Hutchinson samples.

PyHessian itself is not used: its ``cuda=`` flag moves data by hand, several of its files still carry
GPL headers beside its MIT licence, and it is unmaintained; these ~100 lines follow its stopping rules
and are tested against the explicit Hessian.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import ImageSet
from .devices import generator
from .layers import frozen


def _parameters(model):
    return [p for p in model.parameters() if p.requires_grad]


def hessian_vector_product(model, data: ImageSet, vectors, chunk=256):
    """H v for the mean cross-entropy over ``data`` (``vectors``: one tensor per trainable parameter)."""
    params = _parameters(model)
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(data), chunk):
        x = data.images[start:start + chunk].to(device=device, dtype=params[0].dtype).div_(255)
        y = data.labels[start:start + chunk].to(device)
        loss = F.cross_entropy(model(x), y, reduction="sum") / len(data)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vectors))
        for t, h in zip(total, torch.autograd.grad(dot, params)):
            t.add_(h)
    return total


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def lambda_max(model, data: ImageSet, iterations=20, tol=1e-3, seed=0) -> float:
    """The Hessian's eigenvalue of largest magnitude, by power iteration from a random vector."""
    model.eval()
    params = _parameters(model)
    g = generator(seed, params[0].device)
    v = [torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype) for p in params]
    eigenvalue = None
    for _ in range(iterations):
        norm = _dot(v, v).sqrt()
        v = [t / norm for t in v]
        hv = hessian_vector_product(model, data, v)
        estimate = _dot(hv, v).item()
        if eigenvalue is not None and abs(estimate - eigenvalue) <= tol * (abs(eigenvalue) + 1e-12):
            return estimate
        eigenvalue, v = estimate, hv
    return eigenvalue


def hessian_trace(model, data: ImageSet, samples=50, seed=0, tol=None, counted=None):
    """Hutchinson's estimate of tr(H) over up to ``samples`` Rademacher vectors: (mean, standard error).
    ``tol``: stop early once the running mean changes by < tol relatively (PyHessian's rule; at least
    two samples).  ``counted``: a dict that receives the number of samples drawn."""
    model.eval()
    params = _parameters(model)
    g = generator(seed, params[0].device)
    values = []
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=g, device=p.device).to(p.dtype) * 2 - 1 for p in params]
        before = sum(values) / len(values) if values else None
        values.append(_dot(hessian_vector_product(model, data, v), v).item())
        mean = sum(values) / len(values)
        if tol is not None and before is not None and abs(mean - before) < tol * (abs(before) + 1e-6):
            break
    if counted is not None:
        counted["samples"] = len(values)
    values = torch.tensor(values, dtype=torch.float64)
    error = (values.std(unbiased=True) / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
    return values.mean().item(), error


SHARPNESS_PROTOCOLS = ("authors", "held-out")


def sharpness(model, data: ImageSet, iterations=20, samples=50, seed=0, data_name="", tol=None) -> dict:
    """lambda_max, tr(H) and its standard error over every parameter of the model (whatever a defense
    left frozen), with what they were computed on.  ``iterations`` / ``samples`` are caps when ``tol``
    stops both estimates early (the authors' protocol), exact counts when it is None."""
    counted = {}
    with frozen(model, trainable=list(model.parameters())):
        trace, error = hessian_trace(model, data, samples=samples, seed=seed, tol=tol, counted=counted)
        largest = lambda_max(model, data, iterations=iterations, seed=seed, tol=tol if tol is not None else 1e-3)
    return {"lambda_max": largest, "trace": trace,
            "trace_se": error, "hessian_images": len(data), "hessian_data": data_name,
            "hessian_settings": {"power_iterations": iterations, "hutchinson_samples": samples, "tol": tol,
                                 "hutchinson_samples_drawn": counted["samples"]}}


def authors_batch(train: ImageSet, pool, images=200, padding=1, seed=0) -> ImageSet:
    """The FIP authors' Hessian batch: ``images`` clean training images (``pool``: indices of ``train`` the
    model learned from), class-balanced and seeded, each augmented once by their transform (random crop
    with ``padding`` pixels of zero padding, horizontal flip).  uint8, as every image set: cropping and
    flipping move pixels without changing their values."""
    from .augment import random_crop_flip
    from .data import class_balanced_split
    per_class = max(1, images // train.num_classes)
    picked = torch.as_tensor(pool)[class_balanced_split(train.labels[pool], per_class, seed, train.num_classes)[0]]
    chosen = train.subset(picked)
    g = generator(seed + 7, "cpu")
    moved = random_crop_flip(chosen.images.float(), padding=padding, generator=g)
    return ImageSet(moved.round().to(torch.uint8), chosen.labels, chosen.num_classes)


def _rademacher_unit(params, g):
    """A random unit vector (flat, over all of ``params``): entries +-1/sqrt(n)."""
    n = sum(p.numel() for p in params)
    signs = torch.randint(0, 2, (n,), generator=g, device=params[0].device).to(params[0].dtype) * 2 - 1
    return signs / n ** 0.5


def _hvp_flat(model, data, params, v, chunk):
    """H v with v and the result flat: hessian_vector_product works per parameter."""
    pieces = [t.view_as(p) for t, p in zip(v.split([p.numel() for p in params]), params)]
    return torch.cat([t.flatten() for t in hessian_vector_product(model, data, pieces, chunk=chunk)])


def lanczos(model, data: ImageSet, steps=80, seed=0, chunk=256, start=None):
    """``steps`` Lanczos iterations on H from a random unit Rademacher vector (or ``start``, flat and
    unit): the Ritz values (nodes) of the tridiagonal matrix T and their weights, the squared first
    components of T's eigenvectors (they sum to 1).  sum(weights * f(nodes)) is Gauss quadrature
    for v^T f(H) v, exact for polynomials of degree < 2 * steps.

    Every Lanczos vector is kept and re-orthogonalised against (steps * n_params numbers: 3.6 GB in
    float32 for PreAct-ResNet-18 at 80 steps); without it, rounding brings back converged
    eigenvalues as spurious copies.  Stops early when the Krylov space is exhausted (beta ~ 0)."""
    model.eval()
    params = _parameters(model)
    v = _rademacher_unit(params, generator(seed, params[0].device)) if start is None else start
    basis = torch.empty(steps, v.numel(), device=v.device, dtype=v.dtype)
    basis[0] = v
    alphas, betas = [], []
    # once the Krylov space is exhausted beta is rounding noise, ~eps * ||H||; genuine betas inside
    # a narrow bulk of eigenvalues can be far smaller than ||H|| yet well above this
    tiny = 100 * torch.finfo(v.dtype).eps
    scale = 0.0
    for j in range(steps):
        w = _hvp_flat(model, data, params, basis[j], chunk)
        alphas.append((w @ basis[j]).item())
        # full reorthogonalisation, twice ("twice is enough"), subsumes w -= alpha v_j + beta v_{j-1}
        done = basis[:j + 1]
        for _ in range(2):
            w -= done.T @ (done @ w)
        beta = w.norm().item()
        scale = max(scale, abs(alphas[-1]), beta)
        if j + 1 == steps or beta <= tiny * scale:
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    t = torch.diag(torch.tensor(alphas, device=v.device, dtype=v.dtype))
    if betas:
        off = torch.tensor(betas, device=v.device, dtype=v.dtype)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(t)
    return nodes, vectors[0] ** 2


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature of the Hessian's eigenvalue density (``spectral_density``).

    nodes, weights: one 1-D tensor per run (a run stopped early at breakdown has fewer);
    grid, density: the Gaussian-broadened density on the grid, integrating to 1 (trapezoid);
    sigma: the Gaussians' standard deviation, in eigenvalue units;
    mass: the density's integral over the grid before it was normalised to 1 (~1 when the grid
    covers every node by a few sigma; well below, the grid cuts off part of the spectrum);
    lambda_max: the largest node of all runs (a lower bound on the Hessian's, tight after enough steps);
    trace, trace_se: n_params * v^T H v averaged over the runs' start vectors (Hutchinson), its standard error.
    """
    nodes: list
    weights: list
    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    mass: float
    lambda_max: float
    trace: float
    trace_se: float
    n_params: int


def spectral_density(model, data: ImageSet, runs=1, steps=80, seed=0, grid=10000, sigma=None,
                     chunk=256) -> SpectralDensity:
    """The Hessian's eigenvalue density, as in FIP's Figure 1 and PyHessian: the mean over ``runs``
    random start vectors of sum_k w_k N(x; node_k, sigma^2).

    ``sigma`` is in eigenvalue units; None takes 1/1000 of the nodes' range (max - min over all runs).
    ``grid`` is a 1-D tensor of points, or a number of points spread evenly from the smallest node
    - 5 sigma to the largest + 5 sigma.  The runs' start vectors come one after another from one
    generator seeded with ``seed``."""
    model.eval()
    params = _parameters(model)
    device = params[0].device
    n = sum(p.numel() for p in params)
    g = generator(seed, device)
    nodes, weights = [], []
    for _ in range(runs):
        a, b = lanczos(model, data, steps=steps, chunk=chunk, start=_rademacher_unit(params, g))
        nodes.append(a)
        weights.append(b)
    grid, density, sigma, mass = broadened_density(nodes, weights, grid=grid, sigma=sigma)
    # v^T H v = e_1^T T e_1 = sum(w * node) for a unit v; n times it is Hutchinson's estimate of tr(H)
    traces = torch.stack([n * (w * a).sum() for a, w in zip(nodes, weights)])
    trace_se = (traces.std() / runs ** 0.5).item() if runs > 1 else float("nan")
    return SpectralDensity(nodes=nodes, weights=weights, grid=grid, density=density, sigma=sigma, mass=mass,
                           lambda_max=max(a.max().item() for a in nodes), trace=traces.mean().item(),
                           trace_se=trace_se, n_params=n)


def broadened_density(nodes, weights, grid=10000, sigma=None):
    """The runs' quadrature (lists of nodes and weights, one tensor per run) as a density: the mean over
    runs of sum_k w_k N(x; node_k, sigma^2) on ``grid``, normalised to integrate to 1 there.  Returns
    (grid, density, sigma, mass before normalising); ``grid`` and ``sigma`` as in ``spectral_density``."""
    everything, mixture = torch.cat(list(nodes)), torch.cat(list(weights)) / len(nodes)
    low, high = everything.min().item(), everything.max().item()
    if sigma is None:
        sigma = (high - low) / 1000 if high > low else max(abs(high), 1.0) / 1000
    if not torch.is_tensor(grid):
        grid = torch.linspace(low - 5 * sigma, high + 5 * sigma, int(grid), device=everything.device,
                              dtype=everything.dtype)
    grid = grid.to(device=everything.device, dtype=everything.dtype)
    gaussians = torch.exp(-0.5 * ((grid[:, None] - everything[None, :]) / sigma) ** 2) / (sigma * (2 * torch.pi) ** 0.5)
    density = gaussians @ mixture
    mass = torch.trapezoid(density, grid).item()
    return grid, density / mass, float(sigma), mass
