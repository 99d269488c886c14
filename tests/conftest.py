"""Fixtures shared by the tests (a module may build on one by requesting it under the same name)."""
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


@pytest.fixture(scope="session")
def smoke_model():
    """``smoke_model(row, **settings)``: the smoke profile's model of a table row, ``(model, manifest)``, in the
    run-wide cache (the root conftest.py), trained with the profile's threads, as a grid's worker trains it:
    whichever trains it first, its weights are the same.  It keeps FIP Figure 1's snapshots, so that the
    tables this session runs (that figure's notebook among them) load it instead of training it again."""
    from purilib.cells import snapshot_every
    from purilib.devices import cpu_threads
    from purilib.profiles import get_profile, training_settings
    from purilib.tables import get_table
    from purilib.training import train_backdoored_model
    smoke = get_profile("smoke")
    snapshots = snapshot_every(get_table("fip-figure1"), smoke)

    def train(row, **settings):
        with cpu_threads(smoke.threads):  # the weights a grid's worker makes of the same recipe
            return train_backdoored_model(attack=row, device="cpu", snapshot_every=snapshots,
                                          **{**training_settings(smoke, row), **settings})
    return train


@pytest.fixture(scope="session")
def clean_model(smoke_model):
    """The smoke Benign model: the one an attack's ``context.clean_model()`` returns on the smoke profile."""
    return smoke_model("Benign")[0]
