"""``python -m purilib purify``: a user's own checkpoint in, purified weights and a record out, ACC / ASR
before and after; bad input refused in one line."""
import json
import subprocess
import sys

import pytest

from purilib import settings
from purilib.__main__ import main
from purilib.checkpoints import load_model
from purilib.models import create_model
from purilib.purify_command import purify_command


@pytest.fixture(scope="module")
def smoke_badnets(smoke_model):
    model, manifest = smoke_model("BadNets")
    return settings.cache_dir() / "models" / manifest["key"], manifest


def test_purify_a_purilib_checkpoint_with_its_manifest(smoke_badnets, tmp_path):
    folder, manifest = smoke_badnets
    lines = []
    record = purify_command([str(folder / "model.safetensors"), "--method", "FT", "--clean-per-class", "10",
                             "--set", "steps=10", "--set", "batch_size=32", "--out", str(tmp_path / "p.safetensors"),
                             "--device", "cpu", "--no-progress"], out=lines.append)
    assert lines[0].startswith("before: ACC") and "ASR" in lines[0] and lines[1].startswith("after FT: ACC")
    assert record["before"]["asr"] == pytest.approx(manifest["asr"], abs=0.01)  # the manifest's own test set
    assert record["defense_config"]["steps"] == 10 and record["clean_images"] == 100
    saved = json.loads((tmp_path / "p.safetensors.json").read_text())
    assert saved["after"] == record["after"] and saved["attack"]["name"] == "BadNets"
    purified = load_model(create_model("preact_resnet18", width=manifest["config"]["width"]), tmp_path / "p.safetensors")
    assert sum(p.numel() for p in purified.parameters()) > 0


@pytest.mark.parametrize("args, message", [
    (["missing.safetensors", "--clean-per-class", "1", "--out", "x.safetensors"], "no checkpoint"),
    (["{model}", "--clean-per-class", "1", "--out", "{tmp}/x.safetensors", "--method", "MagicFix"], "unknown defense"),
    (["{model}", "--clean-per-class", "1", "--out", "{tmp}/x.safetensors", "--set", "nonsense"], "KEY=VALUE"),
    (["{model}", "--clean", "{tmp}/nowhere", "--out", "{tmp}/x.safetensors"], "no folder"),
])
def test_bad_requests_are_one_line(smoke_badnets, tmp_path, capsys, args, message):
    folder, _ = smoke_badnets
    args = [a.format(model=folder / "model.safetensors", tmp=tmp_path) for a in args]
    assert main(["purify", *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_the_command_lists_its_subcommands():
    run = subprocess.run([sys.executable, "-m", "purilib", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "purify CHECKPOINT" in run.stdout and "render TABLE" in run.stdout
    assert main(["nonsense"]) == 2
