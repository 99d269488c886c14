import json

import pytest
import torch

import purilib.training as training

TINY = dict(dataset="synthetic", dataset_kwargs={"num_train": 400, "num_test": 100}, width=0.125,
            epochs=2, batch_size=64, lr=0.05, schedule="cosine", warmup_epochs=0)


def test_training_writes_a_manifest_and_a_second_call_trains_nothing(tmp_path, monkeypatch):
    model, manifest = training.train_backdoored_model(attack="BadNets", cache_dir=tmp_path, device="cpu", **TINY)
    folder = tmp_path / "models" / manifest["key"]
    saved = json.loads((folder / "manifest.json").read_text())
    for field in ("config", "code_version", "train_seconds", "acc", "asr", "ra", "poison_indices"):
        assert field in saved
    assert saved["config"]["seed"] == 0 and saved["config"]["data_checksum"]
    assert not (folder / "partial.pt").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the configuration is cached")
    monkeypatch.setattr(training, "fit", no_training)
    again, manifest_again = training.train_backdoored_model(attack="BadNets", cache_dir=tmp_path, device="cpu", **TINY)
    assert manifest_again["key"] == manifest["key"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="trained again"):  # another seed is another model
        training.train_backdoored_model(attack="BadNets", seed=1, cache_dir=tmp_path, device="cpu", **TINY)


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path, monkeypatch):
    full, _ = training.train_backdoored_model(attack="Blend", cache_dir=tmp_path / "a", device="cpu", **TINY)
    # interrupt a second run after its first epoch
    class StopAfterOneEpoch:
        def __init__(self, iterable=None, **kwargs):
            self.iterable = iterable

        def __iter__(self):
            for i, item in enumerate(self.iterable):
                if i == 1:
                    raise KeyboardInterrupt
                yield item

        def set_postfix(self, **kwargs):
            pass
    real_progress = training.progress
    monkeypatch.setattr(training, "progress", StopAfterOneEpoch)
    with pytest.raises(KeyboardInterrupt):
        training.train_backdoored_model(attack="Blend", cache_dir=tmp_path / "b", device="cpu", **TINY)
    partial = list((tmp_path / "b" / "models").glob("*/partial.pt"))
    first_epoch = torch.load(partial[0], weights_only=True)
    assert len(partial) == 1 and first_epoch["epoch"] == 1 and first_epoch["seconds"] > 0
    monkeypatch.setattr(training, "progress", real_progress)
    resumed, manifest = training.train_backdoored_model(attack="Blend", cache_dir=tmp_path / "b", device="cpu",
                                                        **TINY)
    assert manifest["train_seconds"] >= round(first_epoch["seconds"], 1)  # the interrupted epoch's time counts
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_unknown_training_setting_is_refused():
    with pytest.raises(ValueError, match="unknown training settings"):
        training.train_backdoored_model(epoch=3, **TINY)


def test_a_training_set_smaller_than_a_batch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        training.train_backdoored_model(cache_dir=tmp_path, device="cpu", **{**TINY, "batch_size": 1000})


def test_code_version_changes_with_a_new_untracked_module(tmp_path):
    import subprocess

    from purilib.provenance import code_version as cached
    code_version = cached.__wrapped__  # uncached: the checkout changes under this test
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    (tmp_path / "purilib").mkdir()
    (tmp_path / "purilib" / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(git + ["add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "a"], cwd=tmp_path, check=True)
    clean = code_version(tmp_path)
    assert "dirty" not in clean
    (tmp_path / "purilib" / "b.py").write_text("y = 2\n")
    first = code_version(tmp_path)
    (tmp_path / "purilib" / "b.py").write_text("y = 3\n")
    assert first.startswith(clean + "-dirty-") and code_version(tmp_path) != first


def test_snapshots_are_kept_every_k_epochs_and_a_model_without_them_is_trained_again(tmp_path):
    """FIP Figure 1's history: the weights at epoch 0 and after every k-th epoch (and the last)."""
    tiny = {**TINY, "epochs": 3}
    plain, manifest = training.train_backdoored_model(attack="BadNets", cache_dir=tmp_path, device="cpu", **tiny)
    assert training.snapshot_paths(manifest, tmp_path) == {} and "snapshot_every" not in manifest
    model, manifest = training.train_backdoored_model(attack="BadNets", cache_dir=tmp_path, device="cpu",
                                                      snapshot_every=2, **tiny)
    paths = training.snapshot_paths(manifest, tmp_path)
    assert sorted(paths) == [0, 2, 3] and manifest["snapshot_every"] == 2
    from purilib.checkpoints import load_weights
    last = load_weights(paths[3])
    assert all(torch.equal(last[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(load_weights(paths[0])["linear.weight"], last["linear.weight"])  # epoch 0: untrained
