"""PreAct-ResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016),
as the field builds it.

The model every seed paper evaluates on CIFAR-10, in the form their tables use: the
PreAct-ResNet-18 of the WaNet release that BackdoorBench adopted (11,171,146 parameters for
10 classes).  conv 3x3 -> four stages of two pre-activation blocks -> global average pool
-> linear: no BatchNorm or ReLU after the last block.  (He et al.'s own variant adds a final
BN + ReLU; purilib used that variant up to training format 4.  On it BadNets survived ANP,
FT-SAM and RNP at full width, while the same code removed it from the authors' ResNet-18.)  ``width`` scales every
stage's channel count (64, 128, 256, 512 at width 1.0); the ``cpu`` profile uses
a narrower network so that training fits on two CPU cores.  Inputs are images
in [0, 1]; the CIFAR-10 normalisation is the first layer, so attacks and
defenses never need to know the data statistics.
"""
import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, device="cpu").view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, device="cpu").view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes=10, width=1.0, input_size=(32, 32)):
        super().__init__()
        planes = [max(1, round(64 * width * 2**i)) for i in range(4)]
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, planes[0], 3, 1, 1, bias=False)
        layers, in_planes = [], planes[0]
        for stage, p in enumerate(planes):
            stride = 1 if stage == 0 else 2
            layers.append(nn.Sequential(PreActBlock(in_planes, p, stride), PreActBlock(p, p, 1)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        # what purify checks clean data against (any size runs: the pooling is adaptive)
        self.num_classes, self.input_size = num_classes, tuple(input_size)

    def features(self, x):
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x):
        return self.linear(self.features(x))
