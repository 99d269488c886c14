import pytest
import torch

from purilib.attacks import create_attack
from purilib.data import ImageSet
from purilib.training import DEFAULT_TRAINING, load_training_data


def gray_images(n=4, value=100):
    return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)


def test_badnets_stamps_a_3x3_checkerboard_bottom_right_and_nothing_else():
    images = gray_images()
    out = create_attack("BadNets").apply_trigger(images)
    patch = out[:, :, -3:, -3:]
    expected = torch.tensor([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(patch, expected.expand_as(patch))
    changed = (out != images).any(dim=1)  # [N, 32, 32]
    changed[:, -3:, -3:] = False
    assert not changed.any()


def test_badnets_released_pattern_is_the_seed_papers_and_keyed_apart():
    images = gray_images(value=100)
    released = create_attack("BadNets", pattern="released")
    patch = released.apply_trigger(images)[:, :, -3:, -3:]
    expected = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(patch, expected.expand_as(patch))
    default = create_attack("BadNets")
    assert "pattern" not in default.config() and released.config()["pattern"] == "released"  # other models
    scaled = create_attack("BadNets", pattern="released", cell=2).apply_trigger(images)[0, 0, -6:, -6:]
    assert torch.equal(scaled[::2, ::2], expected) and torch.equal(scaled[1::2, 1::2], expected)
    with pytest.raises(ValueError, match="pattern must be one of"):
        create_attack("BadNets", pattern="random")
    with pytest.raises(ValueError, match="3 squares a side"):
        create_attack("BadNets", pattern="released", size=4)


def test_badnets_opacity_blends_the_patch():
    out = create_attack("BadNets", opacity=0.6).apply_trigger(gray_images(value=100))
    assert out[0, 0, -3, -3].item() == round(0.4 * 100 + 0.6 * 255)
    assert out[0, 0, -3, -2].item() == round(0.4 * 100)


def test_blend_mixes_the_whole_image_at_alpha():
    attack = create_attack("Blend", alpha=0.2)
    images = gray_images(value=50)
    out = attack.apply_trigger(images)
    expected = (0.8 * 50 + 0.2 * attack.pattern).round().to(torch.uint8)
    assert torch.equal(out[0], expected)
    assert (out != images).float().mean() > 0.9  # the trigger covers the image


def test_all_to_one_and_all_to_all_labels():
    labels = torch.arange(10)
    assert torch.equal(create_attack("BadNets", target=3).target_labels(labels), torch.full((10,), 3))
    assert torch.equal(create_attack("BadNets-all").target_labels(labels), (labels + 1) % 10)


def test_poison_indices_skip_the_target_class_and_follow_the_rate():
    labels = torch.arange(1000) % 10
    attack = create_attack("BadNets", poison_rate=0.1, target=0)
    index = attack.poison_indices(labels)
    assert len(index) == 90  # 10% of the 900 non-target images
    assert (labels[index] != 0).all()
    assert torch.equal(index, create_attack("BadNets", poison_rate=0.1, target=0).poison_indices(labels))


def test_triggered_test_set_excludes_the_target_class():
    test = ImageSet(gray_images(20), torch.arange(20) % 10)
    images, true, backdoor = create_attack("Blend", target=0).triggered_test_set(test)
    assert len(images) == 18 and (true != 0).all() and (backdoor == 0).all()


def test_poisoned_images_are_disjoint_from_the_defense_pool():
    config = {**DEFAULT_TRAINING, "dataset": "synthetic", "dataset_kwargs": {"num_train": 1000, "num_test": 100},
              "attack": "BadNets"}
    data = load_training_data(config)
    train, train_part, poison_idx, reserved = data.train, data.attack_train, data.poison_idx, data.reserved
    assert len(poison_idx) > 0
    assert not set(poison_idx.tolist()) & set(reserved.tolist())
    assert len(train_part) + len(reserved) == len(train)
    # the poisoned training copy really carries the trigger and the target label
    assert (train_part.labels == 0).sum() > (train.labels == 0).sum() - len(reserved) // 10


@pytest.mark.parametrize("name, kwargs, message", [
    ("NoSuchAttack", {}, "unknown attack"),
    ("BadNets", {"mode": "all2some"}, "mode"),
    ("BadNets", {"poison_rate": 1.5}, "poison_rate"),
    ("Blend", {"alpha": 2}, "alpha"),
    ("BadNets", {"target": 10}, "target"),
    ("BadNets", {"size": 40}, "does not fit a 32x32 image"),
    ("BadNets", {"size": 3, "image_size": 224}, r"squares \(7 pixels\) must be 1 to the patch's 3"),
])
def test_bad_attack_settings_are_refused_clearly(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_attack(name, **kwargs)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    from purilib.attacks.base import ssim
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    noisy = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    for kwargs in ({}, {"window": 5, "same_size": True}):  # ISSBA's and FBA's windows
        assert ssim(x, x, **kwargs).item() == pytest.approx(1.0, abs=1e-5)
        assert ssim(x, noisy, **kwargs).item() < 0.9
