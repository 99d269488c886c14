import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purilib.data import class_balanced_split, create_dataset
from purilib.defenses import create_defense
from purilib.defenses.base import clean_batches
from purilib.defenses.ibau import implicit_hypergradient, inner_objective, universal_perturbation
from purilib.models import create_model


@pytest.fixture(scope="module")
def model_and_clean():
    torch.manual_seed(0)
    return create_model("preact_resnet18", width=0.125), create_dataset("synthetic", "train", num_train=100)


def _linear_problem():
    """Logistic regression with a strongly convex inner problem (reg 1 >> curvature of the CE term):
    delta*(theta) is unique and plain gradient descent on it converges fast."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        model.weight.copy_(0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64))
        model.bias.copy_(0.1 * torch.randn(3, generator=g, dtype=torch.float64))
    mask = torch.tensor([1.0, 0.0] * 4, dtype=torch.float64).view(8, 1)  # perturb half the batch, as I-BAU does part
    reg, eta = 1.0, 0.1

    def fixed_point_map(delta):
        inner = inner_objective(model, x, y, delta, reg)
        return delta - eta * torch.autograd.grad(inner, delta, create_graph=True)[0]

    def outer_loss(delta):
        return F.cross_entropy(model(x + mask * delta), y)

    def solve_inner():
        delta = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
        for _ in range(200):  # contraction factor about 0.8: converged to float64 precision
            delta = fixed_point_map(delta).detach().requires_grad_(True)
        return delta.detach()

    return model, fixed_point_map, outer_loss, solve_inner


def test_implicit_hypergradient_matches_finite_differences():
    model, fixed_point_map, outer_loss, solve_inner = _linear_problem()
    params = list(model.parameters())
    hypergrad = implicit_hypergradient(outer_loss, fixed_point_map, solve_inner(), params, K=200)
    direct_only = implicit_hypergradient(outer_loss, fixed_point_map, solve_inner(), params, K=0)

    h = 1e-6
    for p, analytic, direct in zip(params, hypergrad, direct_only):
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
            plus = outer_loss(solve_inner()).item()
            with torch.no_grad():
                p.view(-1)[i] -= 2 * h
            minus = outer_loss(solve_inner()).item()
            with torch.no_grad():
                p.view(-1)[i] += h
            numeric.view(-1)[i] = (plus - minus) / (2 * h)
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)
        # the implicit term matters: dropping it (K = 0) gives a clearly different gradient
        assert (direct - numeric).abs().max() > 1e-3


def test_universal_perturbation_respects_the_norm_bound(model_and_clean):
    model, clean = model_and_clean
    model.eval()
    batches = list(clean_batches(clean, 16, 4, "cpu", seed=0))
    bounded = universal_perturbation(model, batches, lr=10.0, reg=0.001, norm_bound=0.2)
    unbounded = universal_perturbation(model, batches, lr=10.0, reg=0.001, norm_bound=math.inf)
    assert bounded.shape == (1, 3, 32, 32)
    assert unbounded.norm() > 0.2  # so the bound was active
    assert bounded.norm() <= 0.2 + 1e-5
    torch.testing.assert_close(bounded, unbounded * 0.2 / unbounded.norm())  # a projection, not a restart


def test_ibau_one_shot_runs_unlearns_and_keeps_bn_statistics(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset(class_balanced_split(clean.labels, per_class=1, seed=0)[0])
    assert len(one_shot) == 10
    defense = create_defense("I-BAU", steps=4, batch_size=16, device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    before, after = model.state_dict(), purified.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    for k in before:  # eval mode throughout, as the released code: BN statistics untouched
        if "running" in k:
            assert torch.equal(before[k], after[k]), k
    assert defense.stats["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert len(defense.stats["perturbation_norms"]) == 4  # 4 steps: 4 rounds of one batch
    assert all(0 < n <= 10.0 + 1e-4 for n in defense.stats["perturbation_norms"])


def test_default_learning_rate_keeps_clean_accuracy():
    """Issue 12's collapse (ACC 22-32% at full width): the released outer Adam lr 1e-3 costs clean accuracy
    by itself; the default (1e-4) keeps it.  Measured on the smoke BadNets model over 20 steps of 32 images:
    ACC drop 1.2 points at 1e-4, 9.0 at 1e-3 (batch 128: -1.6 and 5.0, four times the time)."""
    from purilib.data import clean_subset
    from purilib.metrics import evaluate
    from purilib.profiles import get_profile, training_settings
    from purilib.training import load_training_data, train_backdoored_model
    profile = get_profile("smoke")
    model, manifest = train_backdoored_model(attack="BadNets", device="cpu", **training_settings(profile, "BadNets"))
    data = load_training_data(manifest["config"])
    train, test, reserved = data.train, data.test, data.reserved
    clean = clean_subset(train, reserved, profile.clean_per_class)
    before = evaluate(model, test)["acc"]

    def drop(**overrides):
        defense = create_defense("I-BAU", device="cpu", progress=False, steps=20, rounds=1, batch_size=32, **overrides)
        purified = defense.purify(model, clean)
        return before - evaluate(purified, test)["acc"]
    kept = drop()
    assert kept <= 3.0
    assert drop(lr=1e-3) >= kept + 3.0  # the released rate: what the default guards against
