import copy

import pytest
import torch
import torch.nn.functional as F

from purilib.defenses import create_defense
from purilib.layers import batchnorms as batchnorm_layers
from purilib.defenses.anp import select_neurons


@pytest.fixture(scope="module")
def model_and_clean(model_and_clean):
    model, clean = model_and_clean  # tests/conftest.py's tiny model
    for bn in batchnorm_layers(model).values():  # nonzero, spread BN weights so pruning is visible
        bn.weight.data.uniform_(0.5, 1.5)
    return model, clean


def clean_loss(model, clean):
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(clean.images.float() / 255), clean.labels).item()


def test_unlearning_raises_the_clean_loss(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("RNP", steps=40, batch_size=32, clean_threshold=-1.0, device="cpu", progress=False)
    unlearned = copy.deepcopy(model)
    assert defense.unlearn(unlearned, clean) == 20  # never below the threshold: the whole half of the budget
    before, after = clean_loss(model, clean), clean_loss(unlearned, clean)
    assert after > before + 0.1, (before, after)


def test_unlearning_stops_once_clean_accuracy_falls_to_the_threshold(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("RNP", steps=40, batch_size=32, clean_threshold=1.0, device="cpu", progress=False)
    assert defense.unlearn(copy.deepcopy(model), clean) == 4  # checked after each pass: ceil(100 / 32) steps


def test_rnp_prunes_exactly_the_low_mask_neurons_of_the_original(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("RNP", steps=12, batch_size=32, clean_threshold=-1.0, pruning_by="rate",
                             pruning_value=0.1, device="cpu", progress=False)
    purified = defense.purify(model, clean)
    masks = defense.masks
    assert all(((m >= 0) & (m <= 1)).all() for m in masks.values())
    assert any((m < 1).any() for m in masks.values())  # recovering moved the masks
    neurons = select_neurons(masks, "rate", 0.1)
    assert defense.stats["pruned_neurons"] == len(neurons) > 0
    chosen = {}
    for name, channel in neurons:
        chosen.setdefault(name + ".weight", []).append(channel)
    before, after = model.state_dict(), purified.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():  # the ORIGINAL weights, not the unlearned ones, with gamma zeroed
        expected = value.clone()
        if key in chosen:
            expected[chosen[key]] = 0
        assert torch.equal(after[key], expected), key


def test_rnp_runs_one_shot(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset([int((clean.labels == k).nonzero()[0]) for k in range(clean.num_classes)])
    defense = create_defense("RNP", steps=6, batch_size=32, device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    assert defense.stats["unlearning_steps"] >= 1 and defense.stats["trainable_params"] > 0
    assert torch.isfinite(purified(one_shot.images.float() / 255)).all()
