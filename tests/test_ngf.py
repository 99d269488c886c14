import pytest
import torch

from purilib.data import create_dataset
from purilib.defenses import create_defense, purify
from purilib.defenses.ngf import eig, eigenbasis_second_moment, find_layer, kfac_direction
from purilib.models import create_model



def _changed_keys(before, after):
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_ngf_changes_only_its_layer_bn_statistics_included(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("NGF", steps=12, batch_size=16, device="cpu", progress=False, cov_every=3, inverse_every=5)
    purified = defense.purify(model, clean)
    changed = _changed_keys(model.state_dict(), purified.state_dict())
    assert changed == {"linear.weight", "linear.bias"}  # every other parameter and buffer bit-identical
    assert defense.stats["layer"] == "linear"
    assert defense.stats["trainable_params"] == model.linear.weight.numel() + model.linear.bias.numel()
    assert all(p.requires_grad for p in purified.parameters())


def test_ngf_on_a_conv_layer_moves_only_that_conv():
    torch.manual_seed(1)
    model = create_model("preact_resnet18", width=0.125)
    clean = create_dataset("synthetic", "train", num_train=30)
    purified = purify(model, clean, method="NGF", layer="layer4.1.conv2", steps=4, batch_size=8, device="cpu",
                      progress=False, cov_every=2, scale_every=2, inverse_every=2, reinit=False)
    assert _changed_keys(model.state_dict(), purified.state_dict()) == {"layer4.1.conv2.weight"}


def test_ngf_refuses_layers_it_cannot_precondition(model_and_clean):
    model, _ = model_and_clean
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d"):
        find_layer(model, "layer1.0.bn1")
    with pytest.raises(ValueError, match="no module named"):
        find_layer(model, "layer9")
    assert find_layer(create_model("resnet18", width=0.125))[0] == "fc"


def test_kfac_direction_is_the_damped_kronecker_inverse():
    torch.manual_seed(0)
    n_out, n_in, damping = 3, 4, 1e-2
    a_rows, g_rows = torch.randn(20, n_in, dtype=torch.float64), torch.randn(20, n_out, dtype=torch.float64)
    cov_a, cov_g = a_rows.T @ a_rows / 20, g_rows.T @ g_rows / 20
    grad = torch.randn(n_out, n_in, dtype=torch.float64)
    v = kfac_direction(grad, eig(cov_a), eig(cov_g), damping)
    # dense check: (G kron A + damping I) vec(V) = vec(grad), row-major vec of an out x in matrix
    dense = torch.kron(cov_g, cov_a) + damping * torch.eye(n_out * n_in, dtype=torch.float64)
    expected = torch.linalg.solve(dense, grad.flatten()).reshape(n_out, n_in)
    torch.testing.assert_close(v, expected, rtol=1e-9, atol=1e-9)
    # with G = I the update is grad (A + damping)^-1: plain preconditioning by the input factor
    v_id = kfac_direction(grad, eig(cov_a), eig(torch.eye(n_out, dtype=torch.float64)), damping)
    torch.testing.assert_close(v_id, grad @ torch.linalg.inv(cov_a + damping * torch.eye(n_in, dtype=torch.float64)))


def test_ngf_one_shot_and_kl_clipping(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset([int(torch.nonzero(clean.labels == k)[0]) for k in range(10)])
    assert len(one_shot) == 10
    defense = create_defense("NGF", steps=6, batch_size=32, device="cpu", progress=False, kl_clip=1e-8)
    purified = defense.purify(model, one_shot)
    assert defense.stats["kl_clip_scale_mean"] < 1.0  # a tiny KL budget does shrink the steps
    assert 0 < defense.stats["distance_from_start"]
    assert torch.isfinite(purified.linear.weight).all()


def test_ngf_reinitialises_the_classifier_weight_only_when_asked(model_and_clean):
    model, clean = model_and_clean
    # lr 0: only the re-initialisation can move the weight
    frozen = {"steps": 1, "batch_size": 8, "device": "cpu", "progress": False, "lr": 0.0}
    fresh = purify(model, clean, method="NGF", **frozen)
    assert not torch.allclose(fresh.linear.weight, model.linear.weight)
    assert torch.equal(fresh.linear.bias, model.linear.bias)  # as released: the bias is kept
    bound = (6 / sum(model.linear.weight.shape)) ** 0.5  # Xavier uniform
    assert fresh.linear.weight.abs().max() <= bound
    kept = purify(model, clean, method="NGF", reinit=False, **frozen)
    assert torch.equal(kept.linear.weight, model.linear.weight)


def test_ekfac_eigenvalues_are_second_moments_of_projected_per_sample_gradients():
    torch.manual_seed(0)
    n, positions, n_in, n_out = 5, 3, 4, 2
    a, g = torch.randn(n, positions, n_in, dtype=torch.float64), torch.randn(n, positions, n_out, dtype=torch.float64)
    q_a = torch.linalg.qr(torch.randn(n_in, n_in, dtype=torch.float64))[0]
    q_g = torch.linalg.qr(torch.randn(n_out, n_out, dtype=torch.float64))[0]
    expected = sum((q_g.T @ sum(torch.outer(g[i, p], a[i, p]) for p in range(positions)) @ q_a) ** 2
                   for i in range(n)) / n
    torch.testing.assert_close(eigenbasis_second_moment(a, g, q_a, q_g, chunk=2), expected)
