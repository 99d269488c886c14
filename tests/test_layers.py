"""The grouped (``_foreach_`` / flat-vector) mask and gradient helpers against the per-tensor loops they
replace: the same values, so the defenses' purified weights do not depend on which one ran."""
import pytest
import torch

from purilib.defenses.fip import add_retainer_gradient
from purilib.layers import clamp_, mask_l1


def _tensors(seed, shapes=((4,), (3, 5), (2, 3, 3, 3))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * 2 for s in shapes]


def test_clamp_equals_clamping_each_tensor_with_its_own_floor():
    lows = [0.8, 0.3, -0.1]
    grouped, looped = _tensors(0), _tensors(0)
    clamp_(grouped, lows, 1.0)
    for t, low in zip(looped, lows):
        t.clamp_(low, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(grouped, looped))
    one_floor = _tensors(1)
    clamp_(one_floor, 0.0, 1.0)  # one bound for all
    assert all(t.min() >= 0 and t.max() <= 1 for t in one_floor)


def test_mask_l1_and_its_gradient_equal_the_per_layer_sum():
    flat = [t.requires_grad_() for t in _tensors(2)]
    per_layer = [t.detach().clone().requires_grad_() for t in flat]
    value = mask_l1(flat, center=1.0)
    reference = sum((1 - m).abs().sum() for m in per_layer)
    assert torch.allclose(value, reference)
    value.backward()
    reference.backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(flat, per_layer))


def test_the_retainer_gradient_in_closed_form_is_autograds():
    params = [t.requires_grad_() for t in _tensors(3)]
    start = [p.detach() + 0.1 * torch.randn_like(p) for p in params]
    fisher = [t.abs() for t in _tensors(4)]
    (sum(p.square().sum() for p in params[:2])).backward()  # the last parameter gets no gradient from the loss
    assert params[2].grad is None
    loss_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    add_retainer_gradient(params, fisher, start, weight=5.0)
    copies = [p.detach().clone().requires_grad_() for p in params]
    drift = sum((f * (p - p0).square()).sum() for f, p, p0 in zip(fisher, copies, start))
    expected = torch.autograd.grad(5.0 / 2 * drift, copies)
    for p, lg, e in zip(params, loss_grads, expected):
        torch.testing.assert_close(p.grad, lg + e)


def test_batchnorm_as_affine_is_the_same_function_to_the_second_derivative():
    from purilib.layers import batchnorm_as_affine
    from purilib.models import create_model
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    model.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        model(torch.rand(16, 3, 32, 32))
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])

    def derivatives():
        delta = torch.zeros(1, 3, 32, 32, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta, create_graph=True)  # I-BAU's fixed-point map
        second = torch.autograd.grad(g.square().sum(), [delta, *model.parameters()])
        return [loss.detach(), g.detach(), *second]

    native = derivatives()
    with batchnorm_as_affine(model):
        affine = derivatives()
        assert sum("forward" in vars(m) for m in model.modules()) == 16  # every BN of the network, swapped
    for a, b in zip(native, affine):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert all("forward" not in vars(m) for m in model.modules())  # the layers' own forward again
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        with batchnorm_as_affine(model):
            pass
