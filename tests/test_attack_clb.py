import pytest
import torch
import torch.nn.functional as F

from purilib.attacks import AttackContext, create_attack
from purilib.data import create_dataset
from purilib.profiles import get_profile, training_settings
from purilib.training import train_backdoored_model

# smoke budget; 9x9 corner patches (cell 3) because the smoke model (width 1/8, 5 epochs) learns no 3x3 patch
SMOKE_KWARGS = get_profile("smoke").attack_overrides.get("CLB", {})  # the smoke profile's settings


@pytest.fixture(scope="module")
def poisoned(clean_model):
    train = create_dataset("synthetic", "train", num_train=400)
    attack = create_attack("CLB", poison_rate=0.05, pgd_steps=5, pgd_step=2.0)
    attack.prepare(train, AttackContext(clean_model=lambda: clean_model))
    poisoned_set, index = attack.poison_train_set(train)
    return attack, train, poisoned_set, index


def test_only_target_class_images_are_poisoned_and_labels_stay(poisoned):
    _, train, poisoned_set, index = poisoned
    assert len(index) == 20 and (train.labels[index] == 0).all()  # 5% of 400, all from the target class
    assert torch.equal(poisoned_set.labels, train.labels)
    changed = (poisoned_set.images != train.images).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) == set(index.tolist())


def test_perturbation_is_within_eps_off_the_corners_and_corners_are_stamped(poisoned, clean_model):
    attack, train, poisoned_set, index = poisoned
    delta = poisoned_set.images[index].float() - train.images[index].float()
    corners = attack.mask[0].bool()
    assert delta[:, :, ~corners].abs().max() <= 8
    assert delta[:, :, ~corners].abs().mean() > 2  # PGD did move the pixels
    expected = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)  # bottom-right
    assert torch.equal(poisoned_set.images[index][:, :, -3:, -3:], expected.expand(len(index), 3, 3, 3))
    assert torch.equal(poisoned_set.images[index][:, :, :3, :3], expected.flip(1).expand(len(index), 3, 3, 3))
    # the perturbation makes the images harder for the clean model (higher loss on their true label)
    clean_model.eval()
    with torch.no_grad():
        loss_clean = F.cross_entropy(clean_model(train.images[index].float() / 255), train.labels[index])
        loss_adv = F.cross_entropy(clean_model(attack.perturbed.float() / 255), train.labels[index])
    assert loss_adv > loss_clean


def test_test_time_trigger_is_the_corners_only_and_flip_symmetric():
    attack = create_attack("CLB")
    images = torch.randint(1, 255, (4, 3, 32, 32), dtype=torch.uint8)
    out = attack.apply_trigger(images)
    changed = (out != images).any(1)
    assert changed.any(0).sum() <= 36 and not (changed & ~attack.mask[0].bool()).any()
    assert torch.equal(out[:, :, attack.mask[0].bool()], out.flip(-1)[:, :, attack.mask[0].bool()])
    faint = create_attack("CLB", amplitude=16 / 255).apply_trigger(torch.full((1, 3, 32, 32), 100, dtype=torch.uint8))
    assert faint[0, 0, -1, -1] == 116 and faint[0, 0, -1, -2] == 84 and faint[0, 0, 10, 10] == 100


def test_labels_rate_and_all_to_all():
    labels = torch.arange(1000) % 10
    attack = create_attack("CLB")
    assert torch.equal(attack.target_labels(labels), torch.zeros(1000, dtype=torch.long))
    index = attack.poison_indices(labels)
    assert len(index) == 100 and (labels[index] == 0).all()  # 10% of the set, capped at the 100 target images
    with pytest.raises(ValueError, match="clean-label"):
        create_attack("CLB-all")


def test_state_round_trip_and_mismatch(poisoned):
    attack, train, poisoned_set, _ = poisoned
    restored = create_attack("CLB", poison_rate=0.05, pgd_steps=5, pgd_step=2.0)
    restored.load_state_dict(attack.state_dict())
    assert torch.equal(restored.poison_train_set(train)[0].images, poisoned_set.images)
    other = create_dataset("synthetic", "train", num_train=400, seed=5)
    with pytest.raises(ValueError, match="another training set"):
        restored.poison_train_set(other)


def test_smoke_backdoor_is_learned():
    # seeds 0-2: results/attacks/smoke_calibration.md.  Chance is 10: ACC >= 50 says it still classifies
    # (the poisoned target class costs clean accuracy)
    settings = {**training_settings(get_profile("smoke"), "CLB"), "attack_kwargs": SMOKE_KWARGS}
    _, manifest = train_backdoored_model(attack="CLB", device="cpu", **settings)
    assert manifest["asr"] >= 40 and manifest["acc"] >= 50
