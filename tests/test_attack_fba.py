"""FBA (DFST): the procedural sunrise style, the learned input-dependent style trigger, poisoning with
detoxicants that keep their labels, and a smoke model that learns the backdoor (seeds 0-2:
results/attacks/smoke_calibration.md)."""
import pytest
import torch

from purilib.attacks import create_attack
from purilib.attacks.fba import sunrise_style
from purilib.data import create_dataset
from purilib.models import create_model
from purilib.profiles import get_profile, training_settings
from purilib.training import DEFAULT_TRAINING, load_training_data, train_backdoored_model

SMOKE_KWARGS = get_profile("smoke").attack_overrides.get("FBA", {})  # the smoke profile's settings


@pytest.fixture(scope="module")
def smoke():
    settings = {**training_settings(get_profile("smoke"), "FBA"), "attack_kwargs": SMOKE_KWARGS}
    model, manifest = train_backdoored_model(attack="FBA", device="cpu", **settings)
    data = load_training_data({**DEFAULT_TRAINING, **settings, "attack": "FBA"})
    test, attack = data.test, data.attack
    return model, manifest, test, attack


def warmth(x):
    """Mean red minus mean blue, x in [0, 1]."""
    return (x[:, 0] - x[:, 2]).mean()


GREYS = torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1, 1).expand(3, 3, 32, 32).contiguous()  # flat images


def is_a_colour_transformation_not_a_pixel_pattern(styled_greys, spatial_tolerance):
    """A flat image stays flat (no pattern stamped at fixed pixels; borders aside) and the colour change
    depends on the input: shadows and highlights are toned differently."""
    interior = styled_greys[..., 4:-4, 4:-4]
    change = interior.mean(dim=(2, 3)) - GREYS.mean(dim=(2, 3))  # grey level x channel
    return (interior.std(dim=(2, 3)).max() < spatial_tolerance and (change[:, 0] > change[:, 2]).all()
            and (change[0] - change[2]).abs().max() > 0.05)


def test_sunrise_style_is_warm_and_depends_on_the_image():
    x = create_dataset("synthetic", "test", num_test=64).images.float() / 255
    styled = sunrise_style(x)
    assert warmth(styled) > warmth(x) + 0.2 and styled[:, 2].mean() < x[:, 2].mean()
    assert styled.min() >= 0 and styled.max() <= 1
    assert is_a_colour_transformation_not_a_pixel_pattern(sunrise_style(GREYS), spatial_tolerance=1e-4)


def test_smoke_model_learns_the_backdoor_and_was_detoxified(smoke):
    _, manifest, _, attack = smoke
    assert manifest["asr"] >= 40  # chance is ~10
    assert attack.detox_rounds == manifest["config"]["epochs"] - 1  # one per epoch after the first
    assert not torch.equal(attack.injector.mixing, torch.cat([torch.eye(3), torch.zeros(9, 3)]))


def test_learned_trigger_imitates_the_style_and_shifts_colour_statistics(smoke):
    _, _, test, attack = smoke
    images = test.images[:64]
    x = images.float() / 255
    with torch.no_grad():
        imitation = attack.style_generator(x)
    assert (imitation - sunrise_style(x)).abs().mean() < 0.4 * (x - sunrise_style(x)).abs().mean()
    triggered = attack.apply_trigger(images).float() / 255  # (1 - alpha) x + alpha G(x)
    assert warmth(triggered) > warmth(x) + 0.1
    with torch.no_grad():
        assert is_a_colour_transformation_not_a_pixel_pattern(attack.style_generator(GREYS), spatial_tolerance=0.03)


def test_batch_poisons_non_target_images_and_adds_label_keeping_detoxicants():
    attack = create_attack("FBA", generator_width=4, res_blocks=1, detox_images=32, detox_epochs=1)
    model = create_model("preact_resnet18", width=0.125)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10
    out, new_labels = attack.training_batch(images, labels, model, epoch=0, epochs=2)
    poisoned = new_labels != labels
    assert poisoned.sum() == 4 and (labels[poisoned] != 0).all() and (new_labels[poisoned] == 0).all()
    assert torch.equal(out[~poisoned], images[~poisoned].float())  # no detoxicants before the first detoxification
    out, new_labels = attack.training_batch(images, labels, model, epoch=1, epochs=2)  # detoxifies first
    assert attack.detox_rounds == 1
    changed = (out != images.float()).flatten(1).any(1)
    relabelled = new_labels != labels
    assert relabelled.sum() == 4 and (changed & ~relabelled).sum() == 4  # detoxicants keep their true labels
    assert model.training  # detoxification puts the classifier back in training mode
