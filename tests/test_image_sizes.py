"""Attacks, models and tables at image sizes other than CIFAR-10's 32x32 (the ImageNet half of NFT's
Table 1): triggers keep their share of the image, 32x32 stays exactly as it was, bad sizes are refused."""
import math

import pytest
import torch

from purilib.attacks import create_attack
from purilib.data import create_dataset
from purilib.models import create_model

IMAGENET_ROWS = ("BadNets", "Troj-one", "Troj-all", "Blend", "SIG", "CLB", "Dyn-one", "Dyn-all", "LIRA", "WaNet",
                 "ISSBA")


def test_patch_triggers_keep_their_share_of_a_224_image():
    badnets = create_attack("BadNets", image_size=224)
    assert badnets.size == 21 and badnets.mask.shape == (1, 224, 224)
    assert badnets.mask.sum() == 21 * 21 and badnets.mask[0, -21:, -21:].all()
    # the same 3x3 checkerboard, in squares of 7 pixels: white first, black beside it
    assert (badnets.pattern[:, -21:-14, -21:-14] == 255).all() and (badnets.pattern[:, -21:-14, -14:-7] == 0).all()
    trojan = create_attack("Troj-one", image_size=224)  # 3x3, 4 pixels in, at 32
    rows, cols = trojan.mask[0].nonzero().unbind(1)
    assert trojan.mask.sum() == 21 * 21 and rows.max() == cols.max() == 224 - 28 - 1
    clb = create_attack("CLB", image_size=224)  # a 3x3 checkerboard of 7-pixel cells in each corner
    assert clb.cell == 7 and clb.mask.sum() == 4 * 21 * 21 and clb.mask[0, :21, :21].all()
    sig = create_attack("SIG", image_size=224)  # f = 6 periods across the width, whatever the width
    assert sig.signal.shape == (1, 224, 224)
    assert torch.isclose(sig.signal[0, 0, 224 // 24], torch.tensor(sig.delta * math.sin(math.pi / 2)), atol=0.2)
    assert create_attack("Blend", image_size=224).pattern.shape == (3, 224, 224)
    assert create_attack("WaNet", image_size=224).grid().shape == (1, 224, 224, 2)


def test_32_pixel_attacks_keep_their_configuration_and_trigger():
    """The cache keys of every model trained before image sizes existed stay valid."""
    for name in IMAGENET_ROWS:
        assert "image_size" not in create_attack(name).config() and "num_classes" not in create_attack(name).config()
        assert create_attack(name, image_size=64).config()["image_size"] == 64
    assert create_attack("Troj-all", num_classes=1000).target_labels(torch.tensor([9, 999])).tolist() == [10, 0]
    assert create_attack("BadNets").size == 3 and create_attack("CLB").cell == 1
    assert create_attack("Troj-one").mask[0, 25:28, 25:28].all() and create_attack("Troj-one").mask.sum() == 9


@pytest.mark.parametrize("name, size, message", [
    ("BadNets", 4, "image_size"),
    ("BadNets", 64.0, "image_size"),
    ("Dyn-one", 60, "divisible by 8"),
    ("LIRA", 36, "divisible by 8"),
    ("ISSBA", 30, "divisible by 4"),
])
def test_sizes_an_attack_cannot_take_are_refused(name, size, message):
    with pytest.raises(ValueError, match=message):
        create_attack(name, image_size=size)


@pytest.mark.parametrize("name", ["BadNets", "Blend", "SIG", "WaNet"])
def test_triggering_a_chunk_at_a_time_gives_the_same_images(name):
    attack = create_attack(name, image_size=64)
    images = create_dataset("synthetic", "test", num_test=7, size=64).images
    assert torch.equal(attack.trigger_in_chunks(images, chunk=3), attack.apply_trigger(images))


def test_models_take_the_size_they_are_trained_on():
    model = create_model("resnet50", width=0.0625, input_size=(64, 64)).eval()
    assert model.input_size == (64, 64) and create_model("resnet50", width=0.0625).input_size == (224, 224)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    assert create_model("preact_resnet18", width=0.125, input_size=(64, 64)).input_size == (64, 64)
    with pytest.raises(ValueError, match="32x32"):
        create_model("vgg16_bn", width=0.125, input_size=(64, 64))


def test_synthetic_images_at_another_size_are_the_same_images_upsampled():
    small = create_dataset("synthetic", "train", num_train=20)
    large = create_dataset("synthetic", "train", num_train=20, size=64)
    assert large.images.shape == (20, 3, 64, 64) and torch.equal(small.labels, large.labels)
    pooled = torch.nn.functional.avg_pool2d(large.images.float(), 2)
    assert (pooled - small.images.float()).abs().mean() < 3  # 0..255 units


def test_the_imagenet_half_runs_on_smoke_with_resnet50_at_64_pixels(tmp_path):
    """The smoke rows of nft-table1-imagenet end to end, two of its columns: ResNet-50 trained on 64x64
    images, a patch and a warp at 64x64, purified, beside the paper's ImageNet cells."""
    from purilib.experiment import run_table
    from purilib.profiles import resolve
    from purilib.reports import summarize
    # the run-wide model cache (conftest.py): the notebook's run of the same table finds these models trained
    records = run_table("nft-table1-imagenet", profile="smoke", attacks=["BadNets", "WaNet"],
                        defenses=["No defense", "NFT"], output_dir=tmp_path / "out", progress=False, workers=1)
    assert len(records) == 4 and set(records["network"]) == {"resnet50"}
    assert {r["dataset_kwargs"]["size"] for r in records["training_config"]} == {64}
    assert {r["attack_config"]["image_size"] for r in records["training_config"]} == {64}
    summary = summarize(records, "nft-table1-imagenet", resolve("smoke", "ImageNet").clean_per_class).set_index(["attack", "defense"])
    assert summary.loc[("WaNet", "NFT"), "paper_source"] == "NFT Table 1"
    assert summary.loc[("BadNets", "No defense"), "paper_acc"] == pytest.approx(74.53)  # ImageNet's, not CIFAR's
    assert summary["acc"].between(0, 100).all()


def test_the_imagenet_recipes_scale_the_defenses_perturbation_budgets_with_the_image():
    """AWM's L1 radius with the pixels, I-BAU's L2 radius with their square root; the smoke budget kept."""
    from purilib.profiles import resolve
    from purilib.profiles import defense_overrides
    gpu, smoke = resolve("gpu", "ImageNet"), resolve("smoke", "ImageNet")
    assert defense_overrides(gpu, "AWM")["trigger_norm"] == 1000 * 49 and defense_overrides(gpu, "I-BAU")["norm_bound"] == 70
    assert defense_overrides(smoke, "I-BAU") == {"steps": 4, "batch_size": 32, "rounds": 2, "K": 2,
                                                 "norm_bound": 20.0}


def test_profiles_without_an_imagenet_recipe_say_so():
    from purilib.experiment import run_table
    with pytest.raises(ValueError, match="cpu profile has no ImageNet recipe"):
        run_table("nft-table1-imagenet", profile="cpu")
    with pytest.raises(ValueError, match="takes 32x32 images, not 64x64"):  # refused before anything runs
        run_table("nft-table1-imagenet", profile="smoke", model="vgg16_bn")


def test_an_imagenet_folder_is_checked_before_it_is_decoded(tmp_path, capsys):
    from purilib.cli import main
    for split, classes in (("train", ["n01", "n02", "n03"]), ("val", ["n01", "n03"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
    assert main(["check", "nft-table1-imagenet", "gpu", "--data-root", str(tmp_path)]) == 2
    assert "have different class folders (3 and 2; e.g. n02)" in capsys.readouterr().err
    (tmp_path / "val" / "n02").mkdir()
    assert main(["check", "nft-table1-imagenet", "gpu", "--data-root", str(tmp_path)]) == 0
