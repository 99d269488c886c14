"""Every registered attack and defense runs where its model is.

On CPU the run is inside ``strict_devices()``: a tensor that purilib makes
without naming its device lands on ``meta`` and the first operation mixing it
with the model's tensors fails, as a CPU tensor meeting a CUDA one does on a
GPU.  With a GPU present the same tests also run on CUDA for real (marker
``cuda``)."""
import contextlib

import pytest
import torch

from purilib.attacks import ATTACKS
from purilib.data import clean_subset
from purilib.defenses import DEFENSES, create_defense
from purilib.devices import fork_rng, resolve_device, strict_devices
from purilib.metrics import evaluate
from purilib.profiles import get_profile, training_settings
from purilib.training import load_training_data, train_backdoored_model

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device")])]
# one epoch on 320 synthetic images, the smoke profile's small attack networks made smaller still
TINY = dict(dataset="synthetic", dataset_kwargs={"num_train": 320, "num_test": 64}, width=0.125, epochs=1,
            batch_size=32, lr=0.05, schedule="cosine", warmup_epochs=0)
SMALLER = {"TrojanNN": dict(trigger_steps=3), "ISSBA": dict(encoder_steps=3), "FBA": dict(style_steps=3),
           "CLB": dict(pgd_steps=2)}


def guard(device):
    """The device trap on CPU; on CUDA the real thing needs none."""
    return strict_devices() if device == "cpu" else contextlib.nullcontext()


def tiny_model(attack, device, cache_dir):
    settings = training_settings(get_profile("smoke"), attack)
    settings["attack_kwargs"].update(SMALLER.get(attack, {}))
    return train_backdoored_model(attack=attack, device=device, cache_dir=cache_dir, **{**settings, **TINY})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_prepares_trains_and_evaluates_on_the_device(attack, device, tmp_path):
    """Preparation (own networks), poisoning, the training step (attacks that control it), triggers on
    the test set and the evaluation, all under the trap."""
    with guard(device):
        model, manifest = tiny_model(attack, device, tmp_path)
        data = load_training_data(manifest["config"], None, tmp_path, device)
        test, attacker = data.test, data.attack
        metrics = evaluate(model, test, attacker, device=device)
        images = test.images[:4].to(device)  # a trigger applied where the model is
        triggered = attacker.compose(images, images.flip(0)) if attack == "CBA" else attacker.apply_trigger(images)
    assert triggered.device.type == torch.device(device).type and triggered.dtype == torch.uint8
    assert 0 <= metrics["asr"] <= 100 and next(model.parameters()).device.type == torch.device(device).type


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, manifest = tiny_model("BadNets", "cpu", cache)
    data = load_training_data(manifest["config"], None, cache, "cpu")
    train, reserved = data.train, data.reserved
    return model, clean_subset(train, reserved, per_class=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_defense_runs_on_the_device(name, device, backdoored):
    model, clean = backdoored
    overrides = {**get_profile("smoke").defense_overrides.get("*", {}), "steps": 2, "batch_size": 8}
    if name == "I-BAU":
        overrides.update(rounds=1)
    defense = create_defense(name, device=device, progress=False, **overrides)
    with guard(device):
        purified = defense.purify(model, clean)
    assert all(p.device.type == torch.device(device).type for p in purified.parameters())
    assert defense.stats["trainable_params"] > 0


def test_the_trap_catches_a_tensor_made_without_a_device():
    """The test above can fail: a bare factory call in purilib's code is caught."""
    from purilib.devices import generator  # noqa: F401  (a purilib module, so the trap applies to it)
    namespace = {"__name__": "purilib.example", "torch": torch}
    exec("def masked(w):\n    return w * torch.ones(w.shape[0])\n", namespace)
    weight = torch.ones(3)
    assert torch.equal(namespace["masked"](weight), weight)
    with strict_devices(), pytest.raises(RuntimeError, match="device"):
        namespace["masked"](weight)


@pytest.mark.parametrize("device, message", [("tpu", "unknown device|unsupported device"), ("cuda:99", "CUDA"),
                                             ("nonsense", "unknown device")])
def test_bad_devices_are_refused(device, message):
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_seeded_work_leaves_the_callers_gpu_random_state_alone():
    torch.cuda.manual_seed(5)
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(5)
    with fork_rng():
        torch.cuda.manual_seed(0)
        torch.rand(10, device="cuda")
    assert torch.equal(torch.rand(3, device="cuda"), expected)
