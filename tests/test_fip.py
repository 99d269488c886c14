import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purilib.data import create_dataset
from purilib.defenses import create_defense, purify
from purilib.defenses.fast_fip import add_spectral_shifts, fold_spectral_shifts
from purilib.defenses.fip import fisher_diagonal, fisher_trace
from purilib.models import create_model


def _per_sample_grads(model, x, y):
    params = list(model.parameters())
    out = []
    for xn, yn in zip(x, y):
        logp = F.log_softmax(model(xn[None]), dim=1)[0, yn]
        out.append(torch.cat([g.flatten() for g in torch.autograd.grad(logp, params)]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def mlp_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    x, y = torch.randn(12, 6), torch.randint(0, 4, (12,))
    return model, x, y


def test_fisher_trace_matches_exact_per_sample_computation(mlp_batch):
    model, x, y = mlp_batch
    exact = _per_sample_grads(model, x, y).square().sum(1).mean()  # tr F = mean_n ||g_n||^2
    # the diagonal is exact: its sum is the trace
    assert torch.allclose(sum(f.sum() for f in fisher_diagonal(model, x, y, list(model.parameters()))), exact,
                          rtol=1e-5)
    # the sign-probe estimate is unbiased; one probe spreads ~35% here, so the mean of 2000 probes has a
    # standard error of ~0.8%: the tolerance, 4%, is 5 standard errors
    estimate = fisher_trace(model, x, y, probes=2000, generator=torch.Generator().manual_seed(1))
    assert abs(estimate.item() / exact.item() - 1) < 0.04
    # a single probe is not the trace (this is what the average above is checked against)
    singles = torch.stack([fisher_trace(model, x, y, generator=torch.Generator().manual_seed(s)) for s in range(20)])
    assert singles.std() > 0.01 * exact
    # the true Fisher, labels drawn from the model: E_y~p ||grad log p(y|x)||^2, exactly over all 4 labels
    probs = F.softmax(model(x), dim=1).detach()
    true_trace = sum((probs[:, c] * _per_sample_grads(model, x, torch.full_like(y, c)).square().sum(1)).mean()
                     for c in range(4))
    sampled = fisher_trace(model, x, None, probes=2000, generator=torch.Generator().manual_seed(2))
    assert abs(sampled.item() / true_trace.item() - 1) < 0.04  # same spread, same tolerance
    # differentiable as a penalty
    penalty = fisher_trace(model, x, y, create_graph=True)
    assert penalty.requires_grad


@pytest.fixture(scope="module")
def model_and_clean():
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    for m in model.modules():  # non-trivial BN statistics, so frozen-ness is visible
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.running_var.uniform_(0.5, 2.0)
    train = create_dataset("synthetic", "train", num_train=100)
    one_shot = train.subset([(train.labels == c).nonzero()[0].item() for c in range(10)])
    return model, one_shot


def test_spectral_shifts_at_zero_reproduce_the_model(model_and_clean):
    model, clean = model_and_clean
    x = clean.images.float().div(255)
    reference = model.eval()(x)
    shifted = create_model("preact_resnet18", width=0.125)
    shifted.load_state_dict(model.state_dict())
    deltas = add_spectral_shifts(shifted.eval())
    assert all(not p.requires_grad for n, p in shifted.named_parameters() if not n.endswith("delta"))
    assert torch.allclose(shifted(x), reference, atol=1e-4, rtol=1e-4)
    assert sum(d.numel() for d in deltas) == sum(min(m.weight.shape[0], m.weight[0].numel())
                                                 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    fold_spectral_shifts(shifted)
    assert set(shifted.state_dict()) == set(model.state_dict())
    assert torch.allclose(shifted(x), reference, atol=1e-4, rtol=1e-4)


def test_fast_fip_moves_only_singular_values(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("Fast FIP", steps=5, batch_size=16, lr=0.5, device="cpu", progress=False)
    purified = defense.purify(model, clean)
    before, after = model.state_dict(), purified.state_dict()
    assert set(before) == set(after)
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert defense.stats["trainable_params"] == sum(min(before[n + ".weight"].shape[0],
                                                        before[n + ".weight"][0].numel()) for n in layers)
    moved = 0
    for name in layers:
        w0, w1 = before[name + ".weight"].flatten(1).double(), after[name + ".weight"].flatten(1).double()
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        core = u.T @ w1 @ vh.T  # diag(relu(S + delta)) if W only moved along its own singular vectors
        off_diagonal = core - torch.diag(torch.diagonal(core))
        assert off_diagonal.abs().max() < 1e-4 * s.max(), name
        moved += int(((torch.diagonal(core) - s).abs() > 1e-4).sum())
    assert moved > 0
    for name, _ in model.named_parameters():  # BN weights and biases, conv / linear biases: bit-identical
        if name.rsplit(".", 1)[0] not in layers or name.endswith("bias"):
            assert torch.equal(before[name], after[name]), name


def test_fip_fine_tunes_every_weight_and_leaves_the_input_alone(model_and_clean):
    model, clean = model_and_clean
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    defense = create_defense("FIP", steps=5, batch_size=16, lr=0.05, device="cpu", progress=False)
    purified = defense.purify(model, clean)
    assert defense.stats["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert defense.stats["fisher_trace_first"] > 0
    changed = [k for k, v in snapshot.items() if not torch.equal(purified.state_dict()[k], v)]
    assert "linear.weight" in changed and "conv1.weight" in changed and "layer1.0.bn1.weight" in changed
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_fip_regularisers_pull_where_they_should(model_and_clean):
    model, clean = model_and_clean
    x, y = clean.images.float().div(255), clean.labels
    start = copy.deepcopy(model)  # fisher_diagonal leaves the mode as it found it; the copy keeps the fixture clean
    fisher = fisher_diagonal(start, x, y, list(start.parameters()))

    def run(trace_weight, retain_weight):
        return purify(model, clean, method="FIP", steps=5, batch_size=16, lr=0.05, device="cpu", progress=False,
                      trace_weight=trace_weight, retain_weight=retain_weight)

    def fisher_drift(purified):  # what the retainer penalises: sum_i F_ii (theta_i - theta0_i)^2
        return sum((f * (a - b).square()).sum() for f, a, b in zip(fisher, purified.parameters(), model.parameters()))

    def trace(purified):  # train mode, as during FIP (on a copy: its BN statistics may move)
        return fisher_trace(purified.train(), x, y, probes=32, generator=torch.Generator().manual_seed(0)).item()

    plain = run(0.0, 0.0)
    # a retainer weight at which SGD with momentum 0.95 stays stable along the stiffest direction
    # (lr * eta_r * F_max = 2, under the bound 2 * (1 + 0.95))
    stiff = 2 / (0.05 * max(f.max().item() for f in fisher))
    assert fisher_drift(run(0.0, stiff)) < 0.75 * fisher_drift(plain)  # measured ~0.45 in isolation
    assert trace(run(0.01, 0.0)) < 0.8 * trace(plain)  # the trace penalty flattens the minimum (here ~0.25x)

