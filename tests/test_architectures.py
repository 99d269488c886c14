"""VGG-16-BN (AWM's Table 1) and ResNet-50 (NFT's ImageNet half): their structure, loading a
torchvision ResNet-50 state dict, and every defense on both."""
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import Bottleneck

from purilib.checkpoints import CheckpointError, load_model
from purilib.data import create_dataset
from purilib.defenses import DEFENSES, create_defense
from purilib.defenses.nad import attention_points
from purilib.defenses.nft import block_batchnorms
from purilib.models import create_model
from purilib.models.resnet50 import IMAGENET_MEAN, IMAGENET_STD


def test_vgg16_bn_is_the_cifar_variant():
    model = create_model("vgg16_bn")
    assert sum(p.numel() for p in model.parameters()) == 14_728_266  # kuangliu/pytorch-cifar's VGG16, 10 classes
    assert [name for name, _ in model.named_children()] == ["normalize", "features", "classifier"]
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 5
    assert model.classifier.in_features == 512 and model.input_size == (32, 32)
    tiny = create_model("vgg16_bn", width=0.125)
    assert [c.out_channels for c in tiny.features if isinstance(c, nn.Conv2d)] == [8, 8, 16, 16] + [32] * 3 + [64] * 6


def test_resnet50_has_torchvisions_state_dict_keys():
    with torch.device("meta"):  # full width, no memory or initialisation cost
        ours = create_model("resnet50", num_classes=1000).state_dict()
        theirs = torchvision.models.resnet50(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items() if not k.startswith("normalize.")} == \
        {k: v.shape for k, v in theirs.items()}
    assert torch.allclose(ours["normalize.mean"].flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(ours["normalize.std"].flatten(), torch.tensor(IMAGENET_STD))


def _tiny_torchvision_resnet50(width):
    """A plain torchvision ResNet(Bottleneck, [3, 4, 6, 3]) with its stem and stages rebuilt narrow by
    torchvision's own ``_make_layer``: torchvision's module names, forward and no input normalisation."""
    net = torchvision.models.resnet.ResNet(Bottleneck, [3, 4, 6, 3], num_classes=10)
    stem = round(64 * width)
    net.conv1, net.bn1, net.inplanes = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem), stem
    for i, blocks in enumerate([3, 4, 6, 3]):
        stage = net._make_layer(Bottleneck, round(64 * 2**i * width), blocks, stride=1 if i == 0 else 2)
        setattr(net, f"layer{i + 1}", stage)
    net.fc = nn.Linear(net.inplanes, 10)
    for m in net.modules():  # non-trivial BN statistics, so that loading them is checked too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_a_torchvision_resnet50_state_dict_loads(tmp_path):
    torch.manual_seed(0)
    reference = _tiny_torchvision_resnet50(0.125)
    path = tmp_path / "resnet50.safetensors"  # as a DataParallel-trained checkpoint: "module." prefix
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = create_model("resnet50", width=0.125)
    with pytest.raises(CheckpointError, match="normalization"):  # its inputs' statistics must be named
        load_model(model, path)
    load_model(model, path, normalization=(IMAGENET_MEAN, IMAGENET_STD)).eval()
    x = torch.rand(2, 3, 64, 64)
    normalized = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(normalized), atol=1e-5)


def test_nft_and_nad_find_their_layers_on_vgg_and_resnet50():
    vgg, resnet50 = create_model("vgg16_bn", width=0.125), create_model("resnet50", width=0.125)
    # VGG has no blocks: every BN is masked; ResNet-50: every BN but the stem's (3 per block + 4 shortcuts)
    assert block_batchnorms(vgg) == [m for m in vgg.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(block_batchnorms(resnet50)) == 3 * 16 + 4 and resnet50.bn1 not in block_batchnorms(resnet50)
    pools, read_inputs = attention_points(vgg)
    assert read_inputs and pools == [m for m in vgg.features if isinstance(m, nn.MaxPool2d)]
    assert attention_points(resnet50) == ([resnet50.layer1, resnet50.layer2, resnet50.layer3, resnet50.layer4], False)


@pytest.fixture(scope="module")
def clean():
    return create_dataset("synthetic", "train", num_train=20)  # 2 images per class, 32x32


# the smallest settings the defenses' own tests use: two steps of eight images
OVERRIDES = {"steps": 2, "batch_size": 8}


@pytest.mark.parametrize("architecture", ["vgg16_bn", "resnet50"])
@pytest.mark.parametrize("method", sorted(DEFENSES))
def test_every_defense_runs_on_vgg16_bn_and_resnet50(clean, method, architecture):
    torch.manual_seed(0)
    model = create_model(architecture, width=0.125)
    model.input_size = (32, 32)  # ResNet-50 at 32x32 (1x1 after layer4), so purify accepts the test images
    for m in model.modules():
        if isinstance(m, Bottleneck):
            # an untrained ResNet-50's 16 residual branches add up (per-sample gradient norms ~3000, not ~15 as
            # ResNet-18's): FIP's trace penalty then throws the weights out of range in one step.  Branches
            # start small, as zero-init-residual training has them, but not at 0: every layer gets gradients.
            m.bn3.weight.data.mul_(0.1)
    keys = set(model.state_dict())
    purified = create_defense(method, device="cpu", progress=False, **OVERRIDES).purify(model, clean)
    assert set(purified.state_dict()) == keys  # a plain model of the same architecture comes back
    with torch.no_grad():
        logits = purified(clean.images[:4].float() / 255)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
