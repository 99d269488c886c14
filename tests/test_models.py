import pytest
import torch
from torch import nn

from purilib.models import MODELS, create_model


def test_preact_resnet18_is_the_fields():
    """BackdoorBench's PreAct-ResNet-18 (the WaNet release's): no BN or ReLU after the last block."""
    model = create_model("preact_resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_171_146  # BackdoorBench's, 10 classes
    top = [name for name, m in model.named_children()]
    assert top == ["normalize", "conv1", "layer1", "layer2", "layer3", "layer4", "linear"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.children())
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    out = model.layer4(model.layer3(model.layer2(model.layer1(model.conv1(model.normalize(x))))))
    assert torch.allclose(model(x), model.linear(out.mean((2, 3))), atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_declare_what_purify_checks(name):
    model = create_model(name, num_classes=7, width=0.125)
    assert model.num_classes == 7 and len(model.input_size) == 2
    assert model.input_size == ((224, 224) if name == "resnet50" else (32, 32))
    assert model(torch.rand(2, 3, *model.input_size)).shape == (2, 7)
