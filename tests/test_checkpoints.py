import pytest
import torch

from purilib.checkpoints import (
    UnsafeCheckpointError,
    load_model,
    load_weights,
    save_weights,
)
from purilib.models import create_model


def test_safetensors_round_trip(tmp_path):
    model = create_model("preact_resnet18", width=0.125)
    save_weights(model, tmp_path / "m.safetensors")
    other = load_model(create_model("preact_resnet18", width=0.125), tmp_path / "m.safetensors")
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_plain_state_dict_loads(tmp_path):
    model = create_model("resnet18", width=0.125)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert set(load_weights(tmp_path / "m.pt")) == set(model.state_dict())


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_RunsCode.marker}",))


def test_a_pickled_checkpoint_that_carries_code_is_refused(tmp_path):
    _RunsCode.marker = tmp_path / "code-ran"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        load_weights(tmp_path / "evil.pt")
    assert not _RunsCode.marker.exists()


def test_a_whole_pickled_module_is_refused(tmp_path):
    torch.save(create_model("preact_resnet18", width=0.125), tmp_path / "module.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_weights(tmp_path / "module.pt")
