import pytest
import torch

from purilib.attacks import AttackContext, create_attack
from purilib.data import create_dataset
from purilib.profiles import get_profile, training_settings
from purilib.training import train_backdoored_model

SMOKE_KWARGS = get_profile("smoke").attack_overrides.get("ISSBA", {})  # the smoke profile's settings


@pytest.fixture(scope="module")
def prepared():
    train = create_dataset("synthetic", "train", num_train=500)
    attack = create_attack("ISSBA", **SMOKE_KWARGS)
    attack.prepare(train, AttackContext())
    return attack, train


def test_residual_is_sample_specific_and_small(prepared):
    attack, train = prepared
    images = train.images[:16]
    residual = attack.residuals(images)
    assert residual.abs().max() <= 16  # |E(x, s)| <= max_delta = 16 levels, by construction
    # sample-specific: the residuals of different images differ by a sizeable part of their magnitude
    spread = (residual - residual.mean(0)).abs().mean() / residual.abs().mean()
    assert spread > 0.05
    poisoned = attack.apply_trigger(images)
    assert torch.equal(poisoned, (images.float() + residual).round().clamp(0, 255).to(torch.uint8))
    delta = (poisoned.float() - images.float()).abs()
    assert 0.5 < delta.mean() < 16 and delta.max() <= 16
    assert 0 <= attack.info["bit_accuracy"] <= 1 and attack.info["mean_abs_delta"] < 16
    assert not torch.equal(poisoned[0], poisoned[1])


def test_labels_and_poisoned_set(prepared):
    attack, train = prepared
    labels = torch.arange(1000) % 10
    assert torch.equal(attack.target_labels(labels), torch.zeros(1000, dtype=torch.long))
    assert torch.equal(create_attack("ISSBA-all", **SMOKE_KWARGS).target_labels(labels), (labels + 1) % 10)
    poisoned_set, index = attack.poison_train_set(train)
    assert len(index) == 45 and (train.labels[index] != 0).all() and (poisoned_set.labels[index] == 0).all()
    untouched = torch.ones(len(train), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(poisoned_set.images[untouched], train.images[untouched])


def test_state_round_trip(prepared):
    attack, train = prepared
    restored = create_attack("ISSBA", **SMOKE_KWARGS)
    with pytest.raises(RuntimeError, match="prepare"):
        restored.apply_trigger(train.images[:2])
    restored.load_state_dict(attack.state_dict())
    assert torch.equal(restored.apply_trigger(train.images[:8]), attack.apply_trigger(train.images[:8]))
    assert restored.info == attack.info


def test_smoke_backdoor_is_learned():
    # chance is ~10; seeds 0-2: results/attacks/smoke_calibration.md
    settings = {**training_settings(get_profile("smoke"), "ISSBA"), "attack_kwargs": SMOKE_KWARGS}
    _, manifest = train_backdoored_model(attack="ISSBA", device="cpu", **settings)
    assert manifest["asr"] >= 40 and manifest["acc"] >= 60
