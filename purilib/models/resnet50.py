"""ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), torchvision's
ImageNet network, for the ImageNet half of NFT's Table 1.

torchvision's ``ResNet(Bottleneck, [3, 4, 6, 3])`` unchanged (7x7 stride-2 stem, max-pool, four
stages of bottleneck blocks, global average pool, ``fc``), built with ``weights=None``: nothing
is downloaded; the user gives the weights as a file.  The only addition is a ``normalize``
layer applied first, with the ImageNet statistics, so that, as every purilib model, it takes
images in [0, 1].  Every other state-dict key is torchvision's: a plain torchvision
``resnet50`` state dict loads with
``checkpoints.load_model(model, path, normalization=(IMAGENET_MEAN, IMAGENET_STD))``
(it has no ``normalize`` buffers; ``load_model`` asks for the statistics its inputs were
normalised with rather than assume them; a ``module.`` prefix is removed there).

``width`` scales the stem and every stage's bottleneck width (64, 128, 256, 512 at 1.0;
blocks output 4x that), rounded, at least 1, as :mod:`purilib.models.resnet` does: tests
build a tiny one.  ``input_size`` is ImageNet's 224x224 (the standard eval crop, see
``purilib.data.load_image_folder``) unless the model is trained on other images (the smoke
profile's ImageNet stand-in is 64x64).
"""
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from .preact_resnet import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet50(ResNet):
    def __init__(self, num_classes=10, width=1.0, input_size=(224, 224)):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        if width != 1.0:  # rebuild stem and stages at the requested width, under torchvision's names
            stem = max(1, round(64 * width))
            self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.inplanes = stem
            self.layer1 = self._make_layer(Bottleneck, max(1, round(64 * width)), 3)
            self.layer2 = self._make_layer(Bottleneck, max(1, round(128 * width)), 4, stride=2)
            self.layer3 = self._make_layer(Bottleneck, max(1, round(256 * width)), 6, stride=2)
            self.layer4 = self._make_layer(Bottleneck, max(1, round(512 * width)), 3, stride=2)
            self.fc = nn.Linear(self.inplanes, num_classes)
            for m in self.modules():  # torchvision's initialisation, for the layers rebuilt here too
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # an attribute of its own, not inside conv1 as in resnet18: conv1.weight keeps torchvision's key
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        # what purify checks clean data against (any size runs: the pooling is adaptive)
        self.num_classes, self.input_size = num_classes, tuple(input_size)

    def forward(self, x):
        return super().forward(self.normalize(x))
