"""lambda_max and the trace against the eigenvalues of the explicit Hessian of a small model."""
import torch
import torch.nn.functional as F
from torch import nn

from purilib.data import ImageSet
from purilib.hessian import hessian_trace, hessian_vector_product, lambda_max


def small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = ImageSet(torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8), torch.randint(0, 3, (40,)), 3)
    return model, data


def explicit_hessian(model, data):
    params = dict(model.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    flat = torch.cat([p.detach().flatten() for p in params.values()])
    x, y = data.images.double() / 255, data.labels

    def loss(theta):
        pieces, offset = {}, 0
        for name, shape in zip(names, shapes):
            pieces[name] = theta[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, pieces, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_hessian_vector_product_matches_the_explicit_hessian():
    model, data = small_problem()
    hessian = explicit_hessian(model, data)
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = torch.cat([t.flatten() for t in hessian_vector_product(model, data, v, chunk=16)])  # chunks summed
    assert torch.allclose(hv, hessian @ torch.cat([t.flatten() for t in v]), atol=1e-8)


def test_lambda_max_and_trace_match_the_eigenvalues():
    model, data = small_problem()
    eigenvalues = torch.linalg.eigvalsh(explicit_hessian(model, data))
    largest = eigenvalues[eigenvalues.abs().argmax()].item()
    assert abs(lambda_max(model, data, iterations=500, tol=1e-10) - largest) < 1e-4 * abs(largest)
    trace, error = hessian_trace(model, data, samples=400)
    exact = eigenvalues.sum().item()
    assert error > 0 and abs(trace - exact) < 4 * error  # Hutchinson is unbiased: within 4 standard errors
    wrong = hessian_trace(model, data, samples=400, seed=1)[0] * 2
    assert abs(wrong - exact) > 4 * error  # the check can fail


def test_measuring_along_a_defense_does_not_change_what_it_does(model_and_clean):
    from purilib.defenses import create_defense
    from purilib.trajectory import recorder
    model, clean = model_and_clean  # tests/conftest.py's tiny model
    plain = create_defense("FT", steps=6, batch_size=16, device="cpu", progress=False).purify(model, clean)
    points = []
    watched = create_defense("FT", steps=6, batch_size=16, device="cpu", progress=False,
                             callback=recorder(points, clean, clean, None, every=2, iterations=3))
    measured = watched.purify(model, clean)
    assert [p["step"] for p in points] == [2, 4, 6] and all(p["lambda_max"] > 0 for p in points)
    for name, value in plain.state_dict().items():
        assert torch.equal(value, measured.state_dict()[name]), name


def test_the_trajectory_measures_on_a_class_balanced_subset():
    from purilib.trajectory import test_subset
    sorted_by_class = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), torch.arange(10).repeat_interleave(10), 10)
    subset = test_subset(sorted_by_class, 20)
    assert torch.bincount(subset.labels, minlength=10).tolist() == [2] * 10
