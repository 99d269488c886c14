import copy
import math

import pytest
import torch
from torch import nn

from purilib.data import class_balanced_split, create_dataset
from purilib.defenses import create_defense, purify
from purilib.defenses.nad import _Recorder, attention_loss, attention_map, residual_stages
from purilib.models import create_model


@pytest.fixture(scope="module")
def model_and_clean():
    torch.manual_seed(0)
    return create_model("preact_resnet18", width=0.125), create_dataset("synthetic", "train", num_train=100)


def test_attention_map_matches_a_hand_computation():
    a = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]],      # channel 0
                       [[1.0, 0.0], [2.0, -1.0]]]])   # channel 1
    # sum over channels of a^2: [[2, 4], [4, 2]]; its L2 norm is sqrt(40)
    expected = torch.tensor([[[[2.0, 4.0], [4.0, 2.0]]]]) / (math.sqrt(40.0) + 1e-6)
    torch.testing.assert_close(attention_map(a, p=2.0), expected)
    # p = 1: sum of |a| = [[2, 2], [2, 2]], norm 4
    torch.testing.assert_close(attention_map(a, p=1.0), torch.full((1, 1, 2, 2), 2.0 / (4.0 + 1e-6)))


def test_residual_stages_are_found_generically():
    preact = create_model("preact_resnet18", width=0.125)
    assert residual_stages(preact) == [preact.layer1, preact.layer2, preact.layer3, preact.layer4]
    torchvision_style = create_model("resnet18", width=0.125)  # its stem is a Sequential too, but not of blocks
    assert residual_stages(torchvision_style) == [torchvision_style.layer1, torchvision_style.layer2,
                                                  torchvision_style.layer3, torchvision_style.layer4]
    assert residual_stages(nn.Sequential(preact)) == residual_stages(preact)  # wrappers are not stages


def test_attention_loss_is_zero_for_identical_networks_and_not_otherwise(model_and_clean):
    model, clean = model_and_clean
    x = clean.images[:8].float() / 255
    model = copy.deepcopy(model).eval()
    twin, other = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        other.layer2[0].conv1.weight.mul_(-1.0)

    def distillation_loss(student, teacher):
        s, t = _Recorder(residual_stages(student)[-3:]), _Recorder(residual_stages(teacher)[-3:])
        with torch.no_grad():
            student(x)
            teacher(x)
        loss = sum(beta * attention_loss(a, b) for beta, a, b in zip((500, 1000, 1000), s.outputs, t.outputs))
        s.remove()
        t.remove()
        return loss.item()

    assert distillation_loss(model, twin) == 0.0
    assert distillation_loss(model, other) > 1e-3
    assert not model._forward_hooks and not model.layer4._forward_hooks  # hooks removed


def test_nad_one_shot_changes_weights_and_leaves_the_input_alone(model_and_clean):
    model, clean = model_and_clean
    one_shot = clean.subset(class_balanced_split(clean.labels, per_class=1, seed=0)[0])
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    defense = create_defense("NAD", steps=6, batch_size=16, device="cpu", progress=False)
    purified = defense.purify(model, one_shot)
    assert purified.state_dict().keys() == snapshot.keys()
    assert any(not torch.equal(purified.state_dict()[k], v) for k, v in snapshot.items())
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
    assert (defense.stats["teacher_steps"], defense.stats["student_steps"]) == (2, 4)  # 10 : 20 epochs
    assert defense.stats["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert not any(m._forward_hooks for m in purified.modules())  # a plain model comes back
    without_distillation = purify(model, one_shot, method="NAD", steps=6, batch_size=16, betas=(0.0, 0.0, 0.0),
                                  device="cpu", progress=False)
    assert any(not torch.equal(purified.state_dict()[k], v) for k, v in without_distillation.state_dict().items()
               if k.endswith("weight"))  # the attention term does act
