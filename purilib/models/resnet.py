"""ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016)
with the CIFAR stem (3x3 conv, stride 1, no max-pool), built from torchvision's
blocks.  The NFT authors' released code uses this network; ``width`` scales the
channel counts as in :mod:`purilib.models.preact_resnet`."""
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from .preact_resnet import Normalize


class ResNet18(ResNet):
    def __init__(self, num_classes=10, width=1.0, input_size=(32, 32)):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        if width != 1.0:  # rebuild the stages at the requested width
            self.inplanes = max(1, round(64 * width))
            self.layer1 = self._make_layer(BasicBlock, max(1, round(64 * width)), 2)
            self.layer2 = self._make_layer(BasicBlock, max(1, round(128 * width)), 2, stride=2)
            self.layer3 = self._make_layer(BasicBlock, max(1, round(256 * width)), 2, stride=2)
            self.layer4 = self._make_layer(BasicBlock, max(1, round(512 * width)), 2, stride=2)
            self.fc = nn.Linear(self.inplanes, num_classes)
        stem = max(1, round(64 * width))
        self.conv1 = nn.Sequential(Normalize(), nn.Conv2d(3, stem, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.Identity()
        # what purify checks clean data against (any size runs: the pooling is adaptive)
        self.num_classes, self.input_size = num_classes, tuple(input_size)
        for m in self.modules():  # torchvision's initialisation, for the layers rebuilt here too
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
