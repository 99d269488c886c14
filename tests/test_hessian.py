"""lambda_max, the trace and the eigenvalue density against the eigenvalues of the explicit Hessian of a small model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purilib.data import ImageSet
from purilib.hessian import hessian_trace, hessian_vector_product, lambda_max, lanczos, spectral_density


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


def test_the_density_has_unit_mass_and_each_run_unit_weight():
    model, data = small_problem()
    result = spectral_density(model, data, runs=3, steps=30)
    assert len(result.nodes) == len(result.weights) == 3
    assert all(abs(w.sum().item() - 1) < 1e-10 and (w >= 0).all() for w in result.weights)
    assert abs(result.mass - 1) < 1e-6  # the default grid holds every Gaussian, not only after normalising
    assert abs(torch.trapezoid(result.density, result.grid).item() - 1) < 1e-10
    cut = spectral_density(model, data, runs=3, steps=30, grid=torch.linspace(0, 2, 1000, dtype=torch.float64))
    assert cut.mass < 0.9  # a grid missing the negative eigenvalues shows in the mass


def test_lanczos_over_every_dimension_finds_the_eigenvalues():
    model, data = small_problem()
    eigenvalues = torch.linalg.eigvalsh(explicit_hessian(model, data))
    nodes, weights = lanczos(model, data, steps=len(eigenvalues))
    tolerance = 1e-6 * eigenvalues.abs().max()
    # H has repeated eigenvalues (0, from softmax's shift invariance and inputs spanning < 49 dimensions):
    # the Krylov space holds each distinct one once, and Lanczos stops there (breakdown).  Repeats
    # differ by ~1e-16, the closest distinct eigenvalues by ~4e-6
    distinct = eigenvalues[torch.cat([torch.tensor([True]), eigenvalues.diff() > 1e-10])]
    assert len(nodes) == len(distinct)
    assert (nodes - distinct).abs().max() < tolerance
    assert abs(weights.sum().item() - 1) < 1e-10


def test_the_largest_node_approaches_lambda_max_from_below():
    model, data = small_problem()
    largest = torch.linalg.eigvalsh(explicit_hessian(model, data))[-1].item()
    errors = [largest - lanczos(model, data, steps=steps)[0].max().item() for steps in (3, 10, 30)]
    assert all(e > -1e-10 for e in errors)  # Ritz values never exceed the largest eigenvalue
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6 * largest
    assert spectral_density(model, data, runs=2, steps=30).lambda_max == pytest.approx(largest, rel=1e-6)


def test_the_density_s_trace_is_hutchinson_s():
    model, data = small_problem()
    exact = torch.linalg.eigvalsh(explicit_hessian(model, data)).sum().item()
    result = spectral_density(model, data, runs=150, steps=2, grid=100)  # sum(w * node) = v^T H v at any steps
    assert result.n_params == sum(p.numel() for p in model.parameters())
    assert result.trace_se > 0 and abs(result.trace - exact) < 4 * result.trace_se  # within 4 standard errors
    assert abs(1.5 * exact - result.trace) > 4 * result.trace_se  # the check can fail


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


def test_the_density_drawn_from_a_record_is_the_measured_one():
    """spectra.spectrum keeps the nodes and weights; the figure redraws the density from them."""
    from purilib import spectra
    from purilib.hessian import broadened_density
    model, data = small_problem()
    measured = spectral_density(model, data, runs=2, steps=12, seed=3, grid=500)
    record = spectra.spectrum(model, data, runs=2, steps=12, seed=3)
    nodes = [torch.tensor(a, dtype=torch.float64) for a in record["spectrum"]["nodes"]]
    weights = [torch.tensor(w, dtype=torch.float64) for w in record["spectrum"]["weights"]]
    grid, density, sigma, mass = broadened_density(nodes, weights, grid=measured.grid, sigma=measured.sigma)
    assert torch.allclose(density, measured.density, rtol=1e-6) and mass == pytest.approx(measured.mass)
    assert record["lambda_max"] == pytest.approx(measured.lambda_max) and record["trace"] == pytest.approx(measured.trace)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
