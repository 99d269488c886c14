"""Sharpness of the loss at a model: Hessian-vector products, the largest eigenvalue, the trace.

FIP (Karim et al., "Fisher Information guided Purification against Backdoor Attacks", CCS 2024)
measures a backdoored model's loss surface by the Hessian's largest eigenvalue lambda_max and its
trace (Table 6, Figure 1), as PyHessian does (Yao et al., "PyHessian: Neural Networks Through the
Lens of the Hessian", 2020):

- H v by double backward: the gradient of (grad L . v), never forming H;
- lambda_max by power iteration on H v (the eigenvalue of largest magnitude: for a trained
  network's loss that is the largest positive one), stopped when it changes by < ``tol`` relatively;
- tr(H) by Hutchinson's estimator E[v^T H v] over Rademacher vectors v, with its standard error.

L is the mean cross-entropy over a data set (all of it: full-batch, computed in chunks), the network
in eval mode (BN uses its running statistics), over every trainable parameter.  Which data is used
is the caller's choice and must be stated beside the numbers (``sharpness`` records it).
"""
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


def hessian_trace(model, data: ImageSet, samples=50, seed=0):
    """Hutchinson's estimate of tr(H) over ``samples`` Rademacher vectors: (mean, standard error)."""
    model.eval()
    params = _parameters(model)
    g = generator(seed, params[0].device)
    values = []
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=g, device=p.device).to(p.dtype) * 2 - 1 for p in params]
        values.append(_dot(hessian_vector_product(model, data, v), v).item())
    values = torch.tensor(values, dtype=torch.float64)
    error = (values.std(unbiased=True) / len(values) ** 0.5).item() if len(values) > 1 else float("nan")
    return values.mean().item(), error


def sharpness(model, data: ImageSet, iterations=20, samples=50, seed=0, data_name="") -> dict:
    """lambda_max, tr(H) and its standard error over every parameter of the model (whatever a defense
    left frozen), with what they were computed on."""
    with frozen(model, trainable=list(model.parameters())):
        trace, error = hessian_trace(model, data, samples=samples, seed=seed)
        largest = lambda_max(model, data, iterations=iterations, seed=seed)
    return {"lambda_max": largest, "trace": trace,
            "trace_se": error, "hessian_images": len(data), "hessian_data": data_name,
            "hessian_settings": {"power_iterations": iterations, "hutchinson_samples": samples}}
