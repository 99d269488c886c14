import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purilib.data import class_balanced_split, create_dataset
from purilib.defenses import create_defense, ft_sam
from purilib.defenses.ft_sam import ascent_perturbation, sam_step, smooth_cross_entropy
from purilib.models import create_model


@pytest.fixture(scope="module")
def model_and_clean():
    torch.manual_seed(0)
    return create_model("preact_resnet18", width=0.125), create_dataset("synthetic", "train", num_train=100)


def _tiny_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        model[1].bias.uniform_(-0.5, 0.5)  # no zero weights, so that e / |w| is defined everywhere
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    return model, x, y, lambda m: F.cross_entropy(m(x), y)


@pytest.mark.parametrize("adaptive", [False, True])
def test_ascent_perturbation_has_norm_rho(adaptive):
    model, _, _, loss_fn = _tiny_problem()
    loss_fn(model).backward()
    params = list(model.parameters())
    e = ascent_perturbation(params, rho=2.0, adaptive=adaptive)
    # plain SAM: ||e||_2 = rho; adaptive SAM: ||e / |w| ||_2 = rho (the ball is measured in T_w^-1 coordinates)
    scaled = [e_p / p.abs() if adaptive else e_p for e_p, p in zip(e, params)]
    norm = torch.sqrt(sum(s.pow(2).sum() for s in scaled))
    assert abs(norm.item() - 2.0) < 1e-9
    if adaptive:  # and it is not the plain-SAM perturbation
        assert abs(torch.sqrt(sum(e_p.pow(2).sum() for e_p in e)).item() - 2.0) > 1e-3


def test_sam_step_restores_the_weights_and_descends_from_them_with_the_perturbed_gradient():
    model, x, _, loss_fn = _tiny_problem()
    params = list(model.parameters())
    w0 = [p.detach().clone() for p in params]
    reference = copy.deepcopy(model)
    reference(x)  # the BN running statistics one pass at w0 leaves behind
    lr = 0.5
    _, e = sam_step(model, params, torch.optim.SGD(params, lr=lr), loss_fn, rho=0.3, adaptive=True)

    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        for p, w, e_p in zip(perturbed.parameters(), w0, e):
            p.copy_(w + e_p)
    g_perturbed = torch.autograd.grad(loss_fn(perturbed), list(perturbed.parameters()))
    for p, w, g in zip(params, w0, g_perturbed):
        torch.testing.assert_close(p.detach(), w - lr * g, rtol=1e-10, atol=1e-12)
    bn, bn_reference = model[1], reference[1]
    torch.testing.assert_close(bn.running_mean, bn_reference.running_mean)  # not updated by the perturbed pass
    torch.testing.assert_close(bn.running_var, bn_reference.running_var)

    model, _, _, loss_fn = _tiny_problem()  # with a zero step the weights come back bit for bit
    params = list(model.parameters())
    w0 = [p.detach().clone() for p in params]
    sam_step(model, params, torch.optim.SGD(params, lr=0.0), loss_fn, rho=2.0, adaptive=True)
    assert all(torch.equal(p, w) for p, w in zip(params, w0))


def test_label_smoothing_is_the_authors_form_and_is_used(model_and_clean, monkeypatch):
    logits, labels = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])
    target = torch.tensor([[0.9, 0.05, 0.05]])  # 1 - s on the true class, s / (C - 1) elsewhere
    expected = -(target * torch.log_softmax(logits, 1)).sum()
    torch.testing.assert_close(smooth_cross_entropy(logits, labels, 0.1), expected)
    torch.testing.assert_close(smooth_cross_entropy(logits, labels, 0.0), F.cross_entropy(logits, labels))

    seen = []

    def spy(logits, labels, smoothing):
        seen.append(smoothing)
        return smooth_cross_entropy(logits, labels, smoothing)

    monkeypatch.setattr(ft_sam, "smooth_cross_entropy", spy)
    model, clean = model_and_clean
    create_defense("FT-SAM", steps=2, batch_size=8, device="cpu", progress=False).purify(model, clean)
    assert seen and set(seen) == {0.1}  # the default, in both passes of every step


def test_ft_sam_one_shot_changes_weights_and_leaves_the_input_alone(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset(class_balanced_split(clean.labels, per_class=1, seed=0)[0])
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    defense = create_defense("FT-SAM", steps=3, batch_size=16, device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    assert purified.state_dict().keys() == snapshot.keys()
    assert any(not torch.equal(purified.state_dict()[k], v) for k, v in snapshot.items())
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert defense.stats["trainable_params"] == sum(p.numel() for p in model.parameters())
