import torch
from torch import nn

from purilib.defenses import create_defense
from purilib.defenses.awm import project_l1
from purilib.layers import clamp_



def test_project_l1_on_known_vectors():
    torch.testing.assert_close(project_l1(torch.tensor([3.0, -4.0]), 1.0), torch.tensor([3 / 7, -4 / 7]))
    inside = torch.tensor([0.2, -0.3, 0.1])
    assert torch.equal(project_l1(inside, 1.0), inside)  # inside the ball: untouched
    assert torch.equal(project_l1(torch.zeros(5), 1.0), torch.zeros(5))


def test_project_l1_is_the_largest_feasible_point_on_the_ray():
    torch.manual_seed(0)
    delta = torch.randn(1, 3, 8, 8) * 5
    radius = 20.0
    projected = project_l1(delta, radius)
    # brute force: the largest t on a fine grid with ||t * delta||_1 <= radius
    ts = torch.linspace(0, 1, 100001, dtype=torch.float64)
    norms = ts * delta.double().abs().sum()
    t_best = ts[norms <= radius].max()
    scale = (projected.double() / delta.double()).flatten()
    assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-6)  # same direction
    assert abs(scale[0].item() - t_best.item()) < 2e-5
    l1 = projected.abs().sum(dtype=torch.float64).item()
    assert radius * (1 - 1e-6) <= l1 <= radius * (1 + 1e-6)


def test_clip_masks_keeps_masks_in_unit_interval():
    masks = [nn.Parameter(torch.tensor([-0.5, 0.3, 1.7])), nn.Parameter(torch.tensor([[2.0, -1e-3]]))]
    clamp_(masks, 0.0, 1.0)
    assert torch.equal(masks[0].data, torch.tensor([0.0, 0.3, 1.0]))
    assert torch.equal(masks[1].data, torch.tensor([[1.0, 0.0]]))


def test_awm_scales_only_conv_weights_within_bounds(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("AWM", steps=8, inner_steps=3, batch_size=16, lr=0.05,
                             device="cpu", progress=False)
    purified = defense.purify(model, clean)
    before, after = model.state_dict(), purified.state_dict()
    assert before.keys() == after.keys()
    convs = {n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    moved = 0
    for key, value in before.items():
        if key in convs:
            ratio = after[key][value != 0] / value[value != 0]  # the folded mask
            assert (ratio >= -1e-6).all() and (ratio <= 1 + 1e-6).all(), key
            moved += int((ratio < 1 - 1e-6).sum())
        else:  # BN weights/biases/running statistics, the classifier, the normalisation: bit-identical
            assert torch.equal(value, after[key]), key
    assert moved > 0
    s = defense.stats
    assert s["trainable_params"] == sum(model.state_dict()[k].numel() for k in convs)
    assert s["rounds"] == 3 and len(s["perturbation_l1"]) == 3
    assert min(s["mask_min"]) >= 0.0 and max(s["mask_max"]) <= 1.0  # after every round
    # 100 images, 10 per class: the few-shot budget
    assert s["trigger_norm"] == 100.0
    assert all(0 < l1 <= 100.0 * (1 + 1e-6) for l1 in s["perturbation_l1"])


def test_awm_one_shot_and_bound_binds(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset([int(torch.nonzero(clean.labels == k)[0]) for k in range(10)])
    defense = create_defense("AWM", steps=4, inner_steps=2, batch_size=32, few_shot_trigger_norm=5.0,
                             device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    assert defense.stats["trigger_norm"] == 5.0
    # lr-10 ascent leaves delta far outside a radius-5 ball: the projection puts it on the sphere
    assert all(abs(l1 - 5.0) < 5e-5 for l1 in defense.stats["perturbation_l1"])
    assert all(torch.isfinite(v).all() for v in purified.state_dict().values())


def test_awm_uses_the_full_budget_above_the_few_shot_threshold(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("AWM", steps=1, batch_size=4, few_shot_per_class=5, device="cpu", progress=False)
    defense.purify(model, clean)
    assert defense.stats["trigger_norm"] == 1000.0 and defense.stats["rounds"] == 1
