import pytest
import torch

from purilib.attacks import AttackContext, create_attack
from purilib.layers import classifier_of as classifier_layer
from purilib.data import create_dataset
from purilib.profiles import get_profile

# smoke budget; an 8x8 patch because the smoke model (width 1/8, 5 epochs) learns no 3x3 patch (nor BadNets')
SMOKE_KWARGS = get_profile("smoke").attack_overrides.get("TrojanNN", {})  # the smoke profile's settings


@pytest.fixture(scope="module")
def prepared(clean_model):
    attack = create_attack("TrojanNN", **SMOKE_KWARGS)
    attack.prepare(create_dataset("synthetic", "train", num_train=100), AttackContext(clean_model=lambda: clean_model))
    return attack


def test_trigger_stamps_the_optimised_patch_on_the_mask_only(prepared):
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = prepared.apply_trigger(images)
    inside = prepared.mask[0].bool()
    assert torch.equal(out[:, :, inside], prepared.pattern[:, inside].expand(4, -1, -1))
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])
    assert inside.sum() == 64 and inside[24:, 24:].all()


def test_selected_neurons_are_the_most_connected_and_the_trigger_excites_them(prepared, clean_model):
    weight = classifier_layer(clean_model).weight.abs().sum(0)
    assert set(prepared.neurons.tolist()) == set(weight.topk(2).indices.tolist())
    initial = prepared.neuron_activation(clean_model, prepared.initial_pattern).mean()
    optimised = prepared.neuron_activation(clean_model, prepared.pattern).mean()
    assert optimised > initial
    assert torch.allclose(prepared.activations, torch.stack([initial, optimised]))
    g = torch.Generator().manual_seed(1)
    for _ in range(10):  # and beats random patches
        random_patch = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
        assert optimised > prepared.neuron_activation(clean_model, random_patch).mean()


def test_labels_and_poisoned_images():
    labels = torch.arange(1000) % 10
    assert torch.equal(create_attack("Troj-one").target_labels(labels), torch.zeros(1000, dtype=torch.long))
    assert torch.equal(create_attack("Troj-all").target_labels(labels), (labels + 1) % 10)
    index = create_attack("Troj-one").poison_indices(labels)
    assert len(index) == 90 and (labels[index] != 0).all()
    assert len(create_attack("Troj-all").poison_indices(labels)) == 100


def test_state_round_trip_and_unprepared_use(prepared):
    restored = create_attack("TrojanNN", **SMOKE_KWARGS)
    with pytest.raises(RuntimeError, match="prepare"):
        restored.apply_trigger(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    restored.load_state_dict(prepared.state_dict())
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(restored.apply_trigger(images), prepared.apply_trigger(images))


def test_smoke_backdoor_is_learned(smoke_model):
    # chance is ~10; seeds 0-2: results/attacks/smoke_calibration.md.  NFT Table 1's row
    # "Troj-one" (all-to-one TrojanNN), which the tables of this session then find trained
    _, manifest = smoke_model("Troj-one", attack_kwargs=SMOKE_KWARGS)
    assert manifest["asr"] >= 40 and manifest["acc"] >= 60
