import copy

import pytest
import torch

from purilib.defenses import create_defense
from purilib.layers import batchnorms as batchnorm_layers
from purilib.defenses.anp import noise_ascent_step, prune_at_rates, prune_neurons, select_neurons


@pytest.fixture(scope="module")
def model_and_clean(model_and_clean):
    model, clean = model_and_clean  # tests/conftest.py's tiny model
    for bn in batchnorm_layers(model).values():  # nonzero, spread BN weights so pruning is visible
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return model, clean


def random_masks(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(bn.num_features, generator=g) for name, bn in batchnorm_layers(model).items()}


def assert_pruned_exactly(before, after, neurons):
    """BN weights zero at ``neurons``, every other tensor entry bit-identical."""
    chosen = {}
    for name, channel in neurons:
        chosen.setdefault(name + ".weight", []).append(channel)
    b, a = before.state_dict(), after.state_dict()
    assert set(a) == set(b)
    for key, value in b.items():
        expected = value.clone()
        if key in chosen:
            expected[chosen[key]] = 0
        assert torch.equal(a[key], expected), key


def test_noise_ascent_step_stays_within_eps_and_follows_the_gradient_sign():
    torch.manual_seed(0)
    eps = 0.4
    noises = [torch.empty(50).uniform_(-eps, eps) for _ in range(3)]
    for _ in range(3):  # repeated steps of eps from anywhere in the box never leave it
        start = [n.clone() for n in noises]
        grads = [torch.randn(50) for _ in noises]
        noise_ascent_step(noises, grads, eps, step_size=eps)
        for n, s, g in zip(noises, start, grads):
            assert n.abs().max() <= eps + 1e-7
            assert torch.all((n - s) * g.sign() >= 0)  # moved up the loss, or was clamped in place
            assert torch.equal(n, (s + eps * g.sign()).clamp(-eps, eps))


def test_threshold_pruning_zeroes_exactly_the_neurons_with_low_masks(model_and_clean):
    model, _ = model_and_clean
    masks = random_masks(model)
    neurons = select_neurons(masks, "threshold", 0.2)
    expected = {(name, i) for name, m in masks.items() for i in range(len(m)) if m[i] <= 0.2}
    assert set(neurons) == expected and len(neurons) == len(expected) > 0
    pruned = prune_neurons(copy.deepcopy(model), neurons)
    assert_pruned_exactly(model, pruned, neurons)


def test_rate_and_number_pruning_prune_the_requested_count_lowest_first(model_and_clean):
    model, _ = model_and_clean
    masks = random_masks(model, seed=2)
    total = sum(len(m) for m in masks.values())
    assert len(select_neurons(masks, "number", 7)) == 7
    cutoff = torch.cat(list(masks.values())).sort().values
    previous = set()
    for rate, pruned in prune_at_rates(model, masks, [0.0, 0.1, 0.25, 0.5]):
        neurons = select_neurons(masks, "rate", rate)
        assert len(neurons) == round(rate * total)
        assert set(neurons) >= previous  # the sweep only adds neurons
        previous = set(neurons)
        if neurons:  # the lowest masks go first
            assert max(masks[n][i] for n, i in neurons) <= cutoff[len(neurons) - 1]
        zeros = sum(int((bn.weight == 0).sum()) for bn in batchnorm_layers(pruned).values())
        assert zeros == len(neurons)
        assert_pruned_exactly(model, pruned, neurons)
    with pytest.raises(ValueError, match="pruning_by"):
        select_neurons(masks, "ratio", 0.1)


def test_anp_learns_masks_and_prunes_only_bn_weights_of_the_original(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("ANP", steps=6, batch_size=32, pruning_by="rate", pruning_value=0.1,
                             device="cpu", progress=False)
    purified = defense.purify(model, clean)
    masks = defense.masks
    assert all(((m >= 0) & (m <= 1)).all() for m in masks.values())
    assert any((m < 1).any() for m in masks.values())  # the masks did move
    assert defense.stats["max_abs_noise"] <= 0.4 + 1e-6
    assert defense.stats["trainable_params"] == sum(bn.num_features for bn in batchnorm_layers(model).values())
    neurons = select_neurons(masks, "rate", 0.1)
    assert defense.stats["pruned_neurons"] == len(neurons) > 0
    assert_pruned_exactly(model, purified, neurons)  # conv / linear weights and BN statistics untouched


def test_anp_runs_one_shot(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset([int((clean.labels == k).nonzero()[0]) for k in range(clean.num_classes)])
    assert len(one_shot) == 10
    purified = create_defense("ANP", steps=2, batch_size=32, device="cpu", progress=False).purify(model, one_shot)
    assert torch.isfinite(purified(one_shot.images.float() / 255)).all()
