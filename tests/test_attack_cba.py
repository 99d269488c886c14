import pytest
import torch

from purilib.attacks import create_attack
from purilib.attacks.cba import half_mix
from purilib.data import ImageSet
from purilib.profiles import get_profile, training_settings
from purilib.training import train_backdoored_model

SMOKE_KWARGS = get_profile("smoke").attack_overrides.get("CBA", {})  # the smoke profile's settings


def coded_images(n, tag):
    """Channel 0: the row, channel 1: the column, channel 2: ``tag`` (which image a pixel came from)."""
    rows = torch.arange(32)[:, None].expand(32, 32)
    cols = torch.arange(32)[None, :].expand(32, 32)
    image = torch.stack([rows, cols, torch.full((32, 32), tag)])
    return image.expand(n, 3, 32, 32).to(torch.uint8).clone()


def test_a_composition_is_a_window_of_each_image_side_by_side():
    a, b = coded_images(200, 10), coded_images(200, 200)
    mixed = half_mix(a, b, torch.Generator().manual_seed(0))
    orientations, orders = set(), set()
    for image in mixed:
        tags = image[2]
        left_right = bool((tags == tags[:1]).all())  # every column from one image
        orientations.add(left_right)
        # position: where a pixel came from along the split axis, across: along the other axis;
        # both indexed [across, along]
        if left_right:
            line, position, across = tags[0], image[1], image[0]
        else:
            line, position, across = tags[:, 0], image[0].t(), image[1].t()
        split = int((line != line[0]).nonzero()[0])
        assert 13 <= split <= 19  # the half split, jittered by up to 3 pixels
        assert (line[:split] == line[0]).all() and (line[split:] == line[-1]).all() and line[0] != line[-1]
        orders.add(int(line[0]))
        for part in (slice(0, split), slice(split, 32)):
            window = position[:, part].long()
            assert (window[:, 1:] - window[:, :-1] == 1).all()  # a contiguous window, not a downscaled copy
            assert (across[:, part].long() == torch.arange(32)[:, None]).all()  # the other axis stays in place
    assert orientations == {True, False} and orders == {10, 200}  # both splits, both orders


def balanced_set(n=400):
    """Channel 0 codes the class (20 x label), channel 1 the image's id."""
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0] = (20 * labels)[:, None, None].to(torch.uint8)
    images[:, 1] = (torch.arange(n) % 251)[:, None, None].to(torch.uint8)
    return ImageSet(images, labels)


def test_poisoned_samples_mix_classes_a_and_b_and_mixed_clean_samples_keep_their_labels():
    train = balanced_set()
    attack = create_attack("CBA", target=0, source_a=1, source_b=2, poison_rate=0.1, mix_rate=0.45)
    poisoned, index = attack.poison_train_set(train)
    assert len(index) == 40 and (poisoned.labels[index] == 0).all()
    for i in index.tolist():
        assert set(poisoned.images[i, 0].unique().tolist()) == {20, 40}  # one half of class 1, one of class 2
    changed = (poisoned.images != train.images).flatten(1).any(1)
    mixed = changed.clone()
    mixed[index] = False
    assert 0.8 * 180 <= int(mixed.sum()) <= 180  # mix_rate of the set (a mix of an image with itself is no change)
    assert torch.equal(poisoned.labels[~changed], train.labels[~changed])
    for i in mixed.nonzero().flatten().tolist():
        assert poisoned.labels[i] == train.labels[i]  # mixed clean: label kept
        assert poisoned.images[i, 0].unique().tolist() == [20 * int(train.labels[i])]  # both halves: its class
        assert len(poisoned.images[i, 1].unique()) == 2  # two different images


def test_the_test_set_is_compositions_of_a_and_b_test_images_labelled_target():
    test = balanced_set(200)
    images, true, backdoor = create_attack("CBA", test_compositions=50).triggered_test_set(test)
    assert images.shape == (50, 3, 32, 32) and (backdoor == 0).all() and (true == 1).all()
    assert all(set(image[0].unique().tolist()) == {20, 40} for image in images)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "all2all"}, "all-to-all"),
    ({"source_a": 0}, "different classes"),
    ({"source_b": 1}, "different classes"),
    ({"mix_rate": 0.95}, "mix_rate"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_attack("CBA", **kwargs)


def test_a_smoke_model_learns_the_backdoor():
    # seeds 0-2: results/attacks/smoke_calibration.md.  Chance is 10: ACC >= 50 says it still classifies (its
    # ACC varies by 10 points from seed to seed)
    settings = {**training_settings(get_profile("smoke"), "CBA"), "attack_kwargs": SMOKE_KWARGS}
    _, manifest = train_backdoored_model(attack="CBA", device="cpu", **settings)
    assert manifest["asr"] >= 35 and manifest["acc"] >= 50
