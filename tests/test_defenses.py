import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from purilib.data import ImageSet
from purilib.defenses import create_defense, purify
from purilib.defenses.nft import block_batchnorms
from purilib.models import create_model


@pytest.fixture(scope="module")
def model_and_clean(model_and_clean):
    model, clean = model_and_clean  # tests/conftest.py's tiny model
    # give BN weights spread so masking them is visible
    for bn in block_batchnorms(model):
        bn.weight.data.uniform_(0.5, 1.5)
    return model, clean


def test_nft_only_scales_block_bn_weights_and_respects_the_layer_bounds(model_and_clean):
    model, clean = model_and_clean
    purified = purify(model, clean, method="NFT", steps=15, batch_size=32, lr=0.5, device="cpu", progress=False)
    before, after = model.state_dict(), purified.state_dict()
    bn_weights = {name + ".weight" for name, m in model.named_modules() if m in block_batchnorms(model)}
    assert len(bn_weights) == 16  # 2 per block, 8 blocks; stem/final BN left alone
    moved = 0
    for l, name in enumerate([n for n, _ in model.named_parameters() if n in bn_weights], start=1):
        ratio = after[name] / before[name]
        lower = 0.8 * math.exp(-0.5 * l)
        assert (ratio >= lower - 1e-5).all() and (ratio <= 1 + 1e-5).all(), name
        moved += int((ratio < 1 - 1e-6).sum())
    assert moved > 0  # the masks did move
    for name, value in before.items():
        if name.endswith(("weight", "bias")) and name not in bn_weights:
            assert torch.equal(value, after[name]), f"NFT changed frozen {name}"


def test_ft_changes_weights_and_leaves_the_input_model_alone(model_and_clean):
    model, clean = model_and_clean
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    purified = purify(model, clean, method="FT", steps=3, batch_size=16, device="cpu", progress=False)
    assert any(not torch.equal(purified.state_dict()[k], v) for k, v in snapshot.items())
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_defense_records_its_cost(model_and_clean):
    model, clean = model_and_clean
    defense = create_defense("NFT", steps=2, batch_size=8, device="cpu", progress=False)
    defense.purify(model, clean)
    assert defense.stats["trainable_params"] == sum(bn.num_features for bn in block_batchnorms(model))
    assert defense.stats["seconds"] > 0


def test_bad_defense_requests_are_refused(model_and_clean):
    with pytest.raises(ValueError, match="unknown defense"):
        create_defense("MagicFix")
    with pytest.raises(ValueError, match="unknown settings"):
        create_defense("NFT", step=3)


def test_nft_finds_the_block_bns_below_wrappers(model_and_clean):
    model, _ = model_and_clean
    wrapped = torch.nn.Sequential(torch.nn.Identity(), model)
    assert block_batchnorms(wrapped) == block_batchnorms(model)
    torchvision_style = create_model("resnet18", width=0.125)
    names = {n for n, m in torchvision_style.named_modules() if m in block_batchnorms(torchvision_style)}
    assert "bn1" not in names and "layer2.0.downsample.1" in names and len(names) == 19  # as in the NFT code


def test_purify_leaves_the_global_rng_alone(model_and_clean):
    model, clean = model_and_clean
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    purify(model, clean, method="FT", steps=1, batch_size=4, device="cpu", progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("change, message", [
    (lambda s: ImageSet(s.images.float() / 255, s.labels), "uint8"),
    (lambda s: ImageSet(s.images.permute(0, 2, 3, 1).contiguous(), s.labels), "channels last"),
    (lambda s: ImageSet(s.images[:, :1], s.labels), "3 channels"),
    (lambda s: ImageSet(torch.nn.functional.interpolate(s.images.float(), size=64).to(torch.uint8), s.labels),
     "32x32"),
    (lambda s: ImageSet(s.images, s.labels[:50]), "one label per image"),
    (lambda s: ImageSet(s.images, s.labels + 10), r"\[0, 10\)"),
    (lambda s: ImageSet(s.images, s.labels.float()), "integer"),
    (lambda s: ImageSet(s.images[:0], s.labels[:0]), "empty"),
    (lambda s: (s.images, s.labels), "ImageSet"),
])
def test_purify_refuses_clean_data_it_would_misread(model_and_clean, change, message):
    model, clean = model_and_clean
    with pytest.raises((ValueError, TypeError), match=message):
        purify(model, change(clean), method="FT", steps=1, batch_size=4, device="cpu", progress=False)


@pytest.mark.parametrize("name", ["FT", "NFT", "AWM", "ANP", "I-BAU"])
def test_a_callback_sees_every_step(model_and_clean, name):
    """The per-step hook (FIP Figure 3's lambda_max during purification needs it)."""
    model, clean = model_and_clean
    seen = []
    overrides = {"steps": 4, "batch_size": 8} | ({"inner_steps": 2} if name == "AWM" else {}) | (
        {"rounds": 2} if name == "I-BAU" else {})
    defense = create_defense(name, device="cpu", progress=False,
                             callback=lambda step, m: seen.append((step, m.training is not None)), **overrides)
    defense.purify(model, clean)
    assert [s for s, _ in seen] == list(range(4))


@pytest.mark.parametrize("name", ["NFT", "FT-SAM", "ANP", "AWM"])  # masks through parametrize, BN statistics
# frozen by module, the perturbation switch (ANP), eval mode and a perturbation input (AWM)
def test_a_compiled_loop_captures_the_same_step(name, model_and_clean, capsys):
    """compile="eager": torch.compile's graph capture without code generation (quick on a CPU) runs the
    same operations, so the purified weights equal the plain loop's; compile=False is the default."""
    from purilib.defenses import create_defense
    model, clean = model_and_clean
    plain = create_defense(name, device="cpu", progress=False, steps=3, batch_size=16)
    assert plain.compile is False and plain.compiled(model) is model
    captured = create_defense(name, device="cpu", progress=False, steps=3, batch_size=16, compile="eager")
    a, b = plain.purify(model, clean).state_dict(), captured.purify(model, clean).state_dict()
    assert "torch.compile" not in capsys.readouterr().out  # captured, not fallen back to the plain loop
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert create_defense(name, device="cpu", compile="auto").compiled(model) is model  # auto: CUDA only


HOST_SYNCS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal"}  # .item(), bool(t), t[mask]


class _HostSyncs(TorchDispatchMode):
    """The operations that wait for the device's answer: a CUDA graph capture fails at the first."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in HOST_SYNCS:
            self.found.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["FIP", "Fast FIP", "I-BAU"])  # a double backward: torch.compile cannot
def test_a_captured_step_is_the_plain_step(name, model_and_clean, capsys, monkeypatch):
    """compile="eager": each step runs on fixed input buffers, as a CUDA graph replays it (Defense.captured),
    and the weights come out as the plain loop's.  FIP: 10 steps, the penalty every 2nd, so each kind of
    step runs its 3 warm-up calls, then 2 on the fixed buffers (cloned into, then copied into).  And no
    step waits for the device (what makes a capture fail): checked here, on the CPU, operation by operation."""
    from purilib.defenses.base import CapturedStep
    model, clean = model_and_clean
    settings = dict(steps=10, batch_size=16, device="cpu", progress=False) | (
        {"rounds": 2, "K": 2} if name == "I-BAU" else {"trace_weight": 0.01, "trace_every": 2})
    plain = create_defense(name, **settings)
    assert plain.captured(len) is len  # compile=False: the plain step
    syncs, call, adam_step = _HostSyncs(), CapturedStep.__call__, torch.optim.Adam.step

    def watched(self, *inputs):
        with syncs:
            return call(self, *inputs)

    def adam_unwatched(self, *args, **kwargs):  # Adam on the CPU reads its step count on the host; I-BAU's on
        with _disable_current_modes():  # CUDA graphs is capturable=True, its count kept on the device
            return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(CapturedStep, "__call__", watched)
    monkeypatch.setattr(torch.optim.Adam, "step", adam_unwatched)
    captured = create_defense(name, compile="eager", **settings)
    a, b = plain.purify(model, clean).state_dict(), captured.purify(model, clean).state_dict()
    assert "capture failed" not in capsys.readouterr().out
    assert syncs.found == []
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.stats.get("fisher_trace_last") == captured.stats.get("fisher_trace_last")


def test_a_step_whose_capture_fails_runs_plain(capsys):
    """No CUDA here, so capturing fails: said once, and every call (this one included) runs the step."""
    from purilib.defenses.base import CapturedStep
    total = torch.zeros(())

    def step(x):
        total.add_(x.sum())
        return total * 2

    captured = CapturedStep(step, "test", graph=True, warmup=0)
    outputs = [captured(torch.full((3,), float(i))).item() for i in range(1, 4)]
    assert outputs == [6.0, 18.0, 36.0] and total.item() == 18.0
    assert capsys.readouterr().out.count("CUDA graph capture failed") == 1
    emulated = CapturedStep(step, "test", graph=False, warmup=1)
    total.zero_()
    assert [emulated(torch.full((3,), float(i))).item() for i in range(1, 4)] == [6.0, 18.0, 36.0]
    assert emulated.inputs is not None and emulated.cuda_graph is None  # calls 2, 3 ran on the fixed buffer
