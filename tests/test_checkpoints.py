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


@pytest.mark.parametrize("wrap", [
    lambda state: {"module." + k: v for k, v in state.items()},  # DataParallel
    lambda state: {"model": state},
    lambda state: {"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3},
])
def test_common_third_party_forms_load(tmp_path, wrap):
    model = create_model("preact_resnet18", width=0.125)
    torch.save(wrap(model.state_dict()), tmp_path / "m.pt")
    other = load_model(create_model("preact_resnet18", width=0.125), tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_a_classifier_without_purilibs_normalisation_needs_it_named(tmp_path):
    model = create_model("preact_resnet18", width=0.125)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    torch.save(state, tmp_path / "third_party.pt")
    with pytest.raises(ValueError, match="third_party.pt.*normalization=") as error:
        load_model(create_model("preact_resnet18", width=0.125), tmp_path / "third_party.pt")
    assert "\n" not in str(error.value)
    loaded = load_model(create_model("preact_resnet18", width=0.125), tmp_path / "third_party.pt",
                        normalization=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert torch.allclose(loaded.normalize.mean.flatten(), torch.full((3,), 0.5))
    identity = load_model(create_model("preact_resnet18", width=0.125), tmp_path / "third_party.pt",
                          normalization="none")
    assert torch.equal(identity.normalize.std.flatten(), torch.ones(3))


def test_every_checkpoint_error_names_the_file(tmp_path):
    model = create_model("preact_resnet18", width=0.125)
    save_weights(model, tmp_path / "m.safetensors")
    blob = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_weights(tmp_path / "cut.safetensors")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="cut.pt"):
        load_weights(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="m.safetensors.*does not fit"):
        load_model(create_model("resnet18", width=0.125), tmp_path / "m.safetensors")
