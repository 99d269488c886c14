"""Fixtures shared by the defense tests (a module may build on one by requesting it under the same name)."""
import pytest
import torch

from purilib.data import create_dataset
from purilib.models import create_model


@pytest.fixture(scope="module")
def model_and_clean():
    """An untrained width-1/8 PreAct-ResNet-18 (seed 0) and 100 synthetic clean images, fresh per module."""
    torch.manual_seed(0)
    model = create_model("preact_resnet18", width=0.125)
    return model, create_dataset("synthetic", "train", num_train=100)
