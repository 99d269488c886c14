import copy

import pytest
import torch

from purilib.data import create_dataset
from purilib.defenses import create_defense
from purilib.defenses.fp import channel_activations
from purilib.models import create_model

DORMANT = [3, 7, 20]


@pytest.fixture(scope="module")
def model_and_clean():
    """A network whose final BN + ReLU (added after the last stage: FP reads the classifier's input,
    whatever the architecture) leaves channels DORMANT at exactly 0 and the rest active."""
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    model.bn = torch.nn.BatchNorm2d(64)
    model.layer4 = torch.nn.Sequential(model.layer4, model.bn, torch.nn.ReLU())
    model.bn.weight.data.fill_(0.1)
    model.bn.bias.data.uniform_(0.5, 1.5)
    model.bn.weight.data[DORMANT] = 0.0
    model.bn.bias.data[DORMANT] = -1.0
    return model, create_dataset("synthetic", "train", num_train=100)


def test_dormant_channels_rank_lowest_and_are_pruned_first(model_and_clean):
    model, clean = model_and_clean
    activation, features = channel_activations(model, clean)
    assert features.shape == (100, 64)
    assert sorted(torch.argsort(activation)[:3].tolist()) == DORMANT
    assert activation[DORMANT].abs().max() == 0 and activation.sort().values[3] > 0.1
    layer4, _ = channel_activations(model, clean, layer="layer4.0")  # the last stage, before BN + ReLU
    assert layer4.shape == activation.shape and not torch.allclose(layer4, activation)
    defense = create_defense("FP", steps=0, acc_drop=2.0, max_prune_ratio=3 / 64, device="cpu", progress=False)
    defense.purify(model, clean)
    assert defense.stats["pruned_channels"] == DORMANT


def test_pruned_channels_stay_zero_after_fine_tuning(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("FP", steps=4, batch_size=32, acc_drop=2.0, max_prune_ratio=0.25,
                             device="cpu", progress=False)
    purified = defense.purify(model, clean)
    pruned = defense.stats["pruned_channels"]
    assert len(pruned) == 16 and set(DORMANT) <= set(pruned)
    assert torch.all(purified.linear.weight[:, pruned] == 0)
    kept = [i for i in range(64) if i not in pruned]
    assert torch.all(purified.linear.weight[:, kept] != model.linear.weight[:, kept])  # fine-tuned
    assert not torch.equal(purified.conv1.weight, model.conv1.weight)
    assert defense.stats["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_pruning_stops_at_the_accuracy_tolerance(model_and_clean):
    model, clean = model_and_clean
    model = copy.deepcopy(model)
    activation, features = channel_activations(model, clean)
    linear = torch.nn.Linear(64, 10)  # fit the classifier so that it needs its features
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(features), clean.labels).backward()
        optimizer.step()
    model.linear.load_state_dict(linear.state_dict())
    defense = create_defense("FP", steps=0, acc_drop=0.05, device="cpu", progress=False)
    purified = defense.purify(model, clean)
    s = defense.stats

    def accuracy(net):
        with torch.no_grad():
            return (net(clean.images.float() / 255).argmax(1) == clean.labels).float().mean().item()

    assert s["clean_acc_before"] == pytest.approx(accuracy(model)) and s["clean_acc_before"] > 0.2
    assert s["clean_acc_pruned"] == pytest.approx(accuracy(purified))  # the cached scoring is the network's
    assert s["clean_acc_before"] - s["clean_acc_pruned"] < 0.05 * s["clean_acc_before"]
    assert 0 < s["prune_ratio"] < 1
    next_channel = torch.argsort(activation, stable=True)[len(s["pruned_channels"])]
    with torch.no_grad():  # one more channel would have broken the tolerance
        purified.linear.weight[:, next_channel] = 0
    assert s["clean_acc_before"] - accuracy(purified) >= 0.05 * s["clean_acc_before"]


def test_fp_runs_one_shot(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset([int((clean.labels == k).nonzero()[0]) for k in range(clean.num_classes)])
    defense = create_defense("FP", steps=2, batch_size=32, device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    assert torch.isfinite(purified(one_shot.images.float() / 255)).all()
    assert torch.all(purified.linear.weight[:, defense.stats["pruned_channels"]] == 0)
