"""Model registry: ``create_model(name, num_classes=10, width=1.0, input_size=None)``."""
from .preact_resnet import PreActResNet18
from .vgg import VGG16BN


# the torchvision-based networks are imported when one is made: importing torchvision.models imports
# torch._dynamo (~2 s), which a process that lists, checks or renders never needs (one that trains or
# purifies imports it anyway, with its first torch.optim optimizer)
def _resnet18(**kwargs):
    from .resnet import ResNet18
    return ResNet18(**kwargs)


def _resnet50(**kwargs):
    from .resnet50 import ResNet50
    return ResNet50(**kwargs)


MODELS = {"preact_resnet18": PreActResNet18, "resnet18": _resnet18, "vgg16_bn": VGG16BN, "resnet50": _resnet50}


def create_model(name: str, num_classes: int = 10, width: float = 1.0, input_size=None):
    """``input_size``: (height, width) of the images it will take (None: the network's own, 32x32 for the
    CIFAR networks, 224x224 for resnet50)."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of {sorted(MODELS)}")
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    size = {} if input_size is None else {"input_size": tuple(input_size)}
    return MODELS[name](num_classes=num_classes, width=width, **size)
