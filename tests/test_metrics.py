import pytest
import torch

from purilib.attacks import create_attack
from purilib.data import ImageSet
from purilib.metrics import defense_effectiveness_rating, evaluate


class CornerDetector(torch.nn.Module):
    """Predicts class 0 when the bottom-right pixel is white, else the class encoded in pixel (0, 0)."""
    def forward(self, x):
        logits = torch.nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long() % 10, 10).float()
        white = x[:, 0, -1, -1] > 0.99
        logits[white] = torch.nn.functional.one_hot(torch.zeros(int(white.sum()), dtype=torch.long), 10).float()
        return logits


def labelled_images():
    labels = torch.arange(40) % 10
    images = torch.full((40, 3, 32, 32), 90, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    return ImageSet(images, labels)


def test_acc_asr_ra_on_a_hand_made_model():
    test = labelled_images()
    result = evaluate(CornerDetector(), test, create_attack("BadNets", target=0))
    assert result["acc"] == 100.0
    assert result["asr"] == 100.0  # every non-target image goes to class 0 when triggered
    assert result["ra"] == 0.0


def test_asr_ignores_target_class_images():
    test = labelled_images()
    attack = create_attack("Blend", target=0)  # blending changes pixel (0,0): predictions scatter
    result = evaluate(CornerDetector(), test, attack)
    _, true, _ = attack.triggered_test_set(test)
    assert len(true) == 36 and 0 <= result["asr"] <= 100


def test_der_matches_its_definition():
    assert defense_effectiveness_rating(100, 0, 90, 90) == 1.0
    assert defense_effectiveness_rating(100, 100, 90, 90) == 0.5
    assert defense_effectiveness_rating(100, 10, 90, 80) == pytest.approx((90 - 10 + 100) / 200)
    assert defense_effectiveness_rating(1.0, 0.5, 0.9, 0.95, scale=1) == pytest.approx(0.75)  # ACC gain is not a bonus
