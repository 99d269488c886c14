"""VGG-16 with batch normalisation (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015), in the CIFAR form AWM's Table 1 compares on.

Configuration "D": thirteen 3x3 conv + BN + ReLU layers in five groups (64, 64 | 128, 128 |
256 x 3 | 512 x 3 | 512 x 3), each group closed by a 2x2 max-pool, so a 32x32 image leaves
``features`` as a 1x1x512 map; flattened, it feeds a single linear layer 512 -> classes
(14,728,266 parameters for 10 classes).  Why this variant: it is the VGG-16-BN that CIFAR
papers train (kuangliu/pytorch-cifar, bearpaw/pytorch-classification's "VGG for CIFAR10, FC
layers are removed"); ImageNet's three-layer 4096-wide head (torchvision's ``vgg16_bn``) was
made for 7x7 maps and would add ~120M parameters to a 1x1 one.  AWM's release ships no CIFAR
VGG-16 that runs (its ``vgg16_bn`` expects a 2048-wide flattened map, its GTSRB small VGG's).
The modules are laid out as in those CIFAR codebases (``features.<i>`` conv, BN, ReLU, pool;
``classifier``), so their checkpoints load with ``checkpoints.load_model(...,
normalization=...)``; as there, each conv keeps its bias although a BN follows.

purilib's conventions: inputs are images in [0, 1] and the CIFAR-10 normalisation is the
first layer (``normalize``); ``width`` scales every conv's channel count (rounded, at least
1); initialisation as torchvision's VGG.
"""
import torch
from torch import nn

from .preact_resnet import Normalize

CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BN(nn.Module):
    def __init__(self, num_classes=10, width=1.0, input_size=(32, 32)):
        super().__init__()
        if tuple(input_size) != (32, 32):  # its classifier reads the 1x1 map that five poolings leave of 32x32
            raise ValueError(f"vgg16_bn (the CIFAR form) takes 32x32 images, not {input_size[0]}x{input_size[1]}")
        self.normalize = Normalize()
        layers, channels = [], 3
        for v in CONFIG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = max(1, round(v * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)  # the 1x1 map's channels, flattened
        self.num_classes, self.input_size = num_classes, (32, 32)  # what purify checks clean data against
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))
