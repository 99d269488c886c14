"""The image-folder data set (torchvision's ImageFolder layout, e.g. ImageNet) on a tiny folder."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from purilib.data import DataNotFoundError, create_dataset, image_folder_classes, load_image_folder

# class -> (width, height) of its images; classes written out of order, sizes all different
SIZES = {"zebra": [(40, 30), (30, 50), (64, 64)], "ant": [(33, 47), (90, 20)], "bee": [(50, 50), (20, 90), (45, 60)]}


def _colour(name, i):
    return (10 * len(name) + i, 100 + 20 * i, 200 - 30 * i)


def _write(root, split="train"):
    for name, sizes in SIZES.items():
        (root / split / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), _colour(name, i)).save(root / split / name / f"{i:03d}.png")
    # one JPEG, not a solid colour: its pixels are checked against torchvision's eval transform
    gradient = np.stack(np.meshgrid(np.arange(70), np.arange(52)), -1).repeat(2, -1)[..., :3] * 3
    Image.fromarray(gradient.astype(np.uint8)).save(root / split / "ant" / "002.jpg", quality=90)
    return root


def test_image_folder_resizes_crops_and_labels_like_torchvisions_imagefolder(tmp_path):
    root = _write(tmp_path)
    data = create_dataset("image_folder", "train", root=root, size=24)
    assert image_folder_classes(root / "train") == ["ant", "bee", "zebra"]  # sorted folder names
    assert data.images.dtype == torch.uint8 and data.images.shape == (9, 3, 24, 24) and data.num_classes == 3
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for k, (name, i) in enumerate([("ant", 0), ("ant", 1), (None, None), ("bee", 0), ("bee", 1), ("bee", 2),
                                   ("zebra", 0), ("zebra", 1), ("zebra", 2)]):
        if name is not None:  # a solid colour stays itself through resize and crop
            assert data.images[k].flatten(1).T.unique(dim=0).tolist() == [list(_colour(name, i))]
    # the standard eval transform, scaled: Resize(round(24 * 256 / 224) = 27) + CenterCrop(24), as torchvision
    reference = transforms.Compose([transforms.Resize(27), transforms.CenterCrop(24), transforms.PILToTensor()])
    assert torch.equal(data.images[2], reference(Image.open(root / "train" / "ant" / "002.jpg").convert("RGB")))


def test_image_folder_per_class_takes_the_first_files_and_test_reads_val(tmp_path):
    root = _write(tmp_path, split="val")  # ImageNet's layout: train/ and val/
    subset = load_image_folder("test", root, size=16, per_class=2)
    assert subset.images.shape == (6, 3, 16, 16) and subset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    full = load_image_folder("test", root, size=16)
    assert torch.equal(subset.images, full.images[[0, 1, 3, 4, 6, 7]])  # the first two sorted files of each class
    assert len(load_image_folder("test", root, size=16, per_class=5)) == 9  # a class with fewer gives all it has


def test_a_decoded_folder_is_cached_and_decoded_again_when_a_file_changes(tmp_path, monkeypatch):
    import os

    import purilib.data
    root = _write(tmp_path / "data")
    first = load_image_folder("train", root, size=16, cache_dir=tmp_path / "cache", workers=3)
    assert torch.equal(first.images, load_image_folder("train", root, size=16, cache_dir=tmp_path / "other",
                                                       workers=1).images)  # threads change nothing
    decode = purilib.data._decode

    def refuse(*args):
        raise AssertionError("decoded again")
    monkeypatch.setattr(purilib.data, "_decode", refuse)
    again = load_image_folder("train", root, size=16, cache_dir=tmp_path / "cache")  # from the cache
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    changed = root / "train" / "bee" / "000.png"
    Image.new("RGB", (50, 50), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))  # another modification time: the listing's key changes
    with pytest.raises(AssertionError, match="decoded again"):
        load_image_folder("train", root, size=16, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(purilib.data, "_decode", decode)
    assert load_image_folder("train", root, size=16, cache_dir=tmp_path / "cache").images[3].flatten(1).T.unique(
        dim=0).tolist() == [[1, 2, 3]]


def test_image_folder_errors_name_the_folder_in_one_line(tmp_path):
    with pytest.raises(DataNotFoundError, match="no image folder") as missing:
        load_image_folder("train", tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="holds no images") as empty:
        load_image_folder("train", tmp_path / "empty")
    root = _write(tmp_path / "stray")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    with pytest.raises(DataNotFoundError, match="without images: .ipynb_checkpoints") as stray:
        load_image_folder("train", root)
    (root / "train" / ".ipynb_checkpoints" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataNotFoundError, match="broken.jpg' could not be read") as broken:
        load_image_folder("train", root)
    for error, folder in [(missing, tmp_path / "nowhere" / "train"), (empty, tmp_path / "empty" / "train"),
                          (stray, root / "train"), (broken, root / "train")]:
        assert str(folder) in str(error.value) and "\n" not in str(error.value)


def test_a_backdoored_resnet50_trains_from_an_image_folder_at_its_size(tmp_path):
    """The ImageNet path end to end on a tiny folder: the data root is the folder, the attack's trigger
    and the model take its image size (48x48 here), the manifest records it."""
    from purilib.training import train_backdoored_model
    g = np.random.default_rng(0)
    for split, count in (("train", 24), ("val", 4)):
        for c in range(3):
            (tmp_path / "data" / split / f"class{c}").mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(g.normal(80 * c + 40, 30, (40 + i, 56, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / f"class{c}" / f"{i:03d}.png")
    model, manifest = train_backdoored_model(
        attack="BadNets", device="cpu", data_root=tmp_path / "data", cache_dir=tmp_path / "cache",
        dataset="image_folder", dataset_kwargs=dict(size=48), model="resnet50", width=0.0625, epochs=1,
        batch_size=16, lr=0.01, schedule="cosine", reserve_fraction=0.125)
    assert model.input_size == (48, 48) and model.fc.out_features == 3
    assert manifest["config"]["attack_config"]["image_size"] == 48 and manifest["num_train"] == 3 * 21
    assert 0 <= manifest["acc"] <= 100 and 0 <= manifest["asr"] <= 100
    # all-to-all over the folder's 3 classes, not CIFAR-10's 10
    _, manifest = train_backdoored_model(
        attack="BadNets-all", device="cpu", data_root=tmp_path / "data", cache_dir=tmp_path / "cache",
        dataset="image_folder", dataset_kwargs=dict(size=48), model="resnet50", width=0.0625, epochs=1,
        batch_size=16, lr=0.01, schedule="cosine", reserve_fraction=0.125)
    assert manifest["config"]["attack_config"]["num_classes"] == 3
    with pytest.raises(DataNotFoundError, match="no image folder"):
        train_backdoored_model(attack="BadNets", device="cpu", data_root=tmp_path / "nowhere",
                               cache_dir=tmp_path / "cache", dataset="image_folder", model="resnet50")
