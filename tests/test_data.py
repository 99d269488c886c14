import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from purilib.data import (
    CIFAR10_CLASSES,
    DataNotFoundError,
    class_balanced_split,
    clean_subset,
    create_dataset,
    defense_split,
)


def test_synthetic_is_deterministic_and_balanced():
    a = create_dataset("synthetic", "train", num_train=200)
    b = create_dataset("synthetic", "train", num_train=200)
    assert a.images.dtype == torch.uint8 and a.images.shape == (200, 3, 32, 32)
    assert torch.equal(a.images, b.images) and a.checksum() == b.checksum()
    assert torch.bincount(a.labels).tolist() == [20] * 10


def test_splits_are_class_balanced_disjoint_and_seeded():
    train = create_dataset("synthetic", "train", num_train=1000)
    attack_idx, reserved = defense_split(train, reserve_fraction=0.1, seed=0)
    assert not set(attack_idx.tolist()) & set(reserved.tolist())
    assert len(attack_idx) + len(reserved) == 1000
    clean = clean_subset(train, reserved, per_class=5, seed=0)
    assert torch.bincount(clean.labels).tolist() == [5] * 10
    one_shot = clean_subset(train, reserved, per_class=1, seed=0)
    assert len(one_shot) == 10
    with pytest.raises(ValueError, match="fewer than"):
        class_balanced_split(train.labels, 1000, seed=0)


def _png(rgb):
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tree(root):
    for split in ("train", "test"):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = root / "cifar10" / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i:04d}.png").write_bytes(_png(10 * c + i))


def test_cifar10_from_an_image_folder_tree_and_its_tarball(tmp_path):
    tree = tmp_path / "tree"
    _write_tree(tree)
    train = create_dataset("cifar10", "train", data_root=tree, cache_dir=tmp_path / "cache")
    assert len(train) == 20 and torch.bincount(train.labels).tolist() == [2] * 10
    assert train.images[train.labels == 3][0, 0, 0, 0].item() == 30  # the class folder sets the label
    tar_root = tmp_path / "tar"
    tar_root.mkdir()
    with tarfile.open(tar_root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree / "cifar10", arcname="cifar10")
    from_tar = create_dataset("cifar10", "test", data_root=tar_root, cache_dir=tmp_path / "cache")
    assert torch.equal(from_tar.images, create_dataset("cifar10", "test", data_root=tree,
                                                       cache_dir=tmp_path / "cache").images)


def test_cifar10_from_torchvision_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": np.full((3, 3072), 7, dtype=np.uint8), "labels": [0, 1, 2]}
        (folder / name).write_bytes(pickle.dumps(batch))
    train = create_dataset("cifar10", "train", data_root=tmp_path, cache_dir=tmp_path / "cache")
    assert len(train) == 15 and train.images.shape[1:] == (3, 32, 32)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_a_data_batch_that_carries_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Evil(), "labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        create_dataset("cifar10", "train", data_root=tmp_path, cache_dir=tmp_path / "cache")


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(DataNotFoundError, match="PURILIB_DATA_ROOT"):
        create_dataset("cifar10", "train", data_root=tmp_path / "nothing-here", cache_dir=tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        create_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split"):
        create_dataset("synthetic", "val")
