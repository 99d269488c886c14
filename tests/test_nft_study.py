"""The NFT study: NFT's ingredient switches, the study table's columns, and its computed findings."""
import math

import pandas as pd
import pytest
import torch

from purilib.defenses import create_defense, purify
from purilib.defenses.nft import block_batchnorms
from purilib.cells import record_path
from purilib.experiment import run_table
from purilib.layers import batchnorms
from purilib.models import create_model
from purilib.profiles import get_profile
from purilib.studies import findings, mask_table
from purilib.tables import NFT_STUDY_VARIANTS, get_table


def test_all_bns_masks_the_stem_bn_that_the_released_setting_leaves_alone(model_and_clean):
    _, clean = model_and_clean
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125)  # the NFT authors' network: a stem BN outside the blocks
    released = create_defense("NFT", steps=2, batch_size=8, device="cpu", progress=False)
    every = create_defense("NFT", steps=2, batch_size=8, device="cpu", progress=False, mask_layers="all")
    released.purify(model, clean), every.purify(model, clean)
    assert len(released.stats["mask_mean_per_layer"]) == len(block_batchnorms(model)) == 19
    assert len(every.stats["mask_mean_per_layer"]) == len(batchnorms(model)) == 20
    with pytest.raises(ValueError, match="mask_layers"):
        create_defense("NFT", steps=1, device="cpu", progress=False, mask_layers="final").purify(model, clean)


def test_without_the_clamp_masks_leave_the_layer_bounds(model_and_clean):
    model, clean = model_and_clean
    kwargs = dict(method="NFT", steps=15, batch_size=32, lr=5.0, final_lr=5.0, device="cpu", progress=False)
    bn = {name + ".weight" for name, m in model.named_modules() if m in block_batchnorms(model)}

    def ratios(purified):
        return [purified.state_dict()[n] / model.state_dict()[n] for n, _ in model.named_parameters() if n in bn]

    bounded, unbounded = ratios(purify(model, clean, **kwargs)), ratios(purify(model, clean, clamp=False, **kwargs))
    floors = [0.8 * math.exp(-0.5 * l) for l in range(1, len(bounded) + 1)]
    assert all((r >= f - 1e-5).all() and (r <= 1 + 1e-5).all() for r, f in zip(bounded, floors))
    assert any((r < f - 1e-3).any() or (r > 1 + 1e-3).any() for r, f in zip(unbounded, floors))


def test_no_mixup_trains_on_unmixed_batches(model_and_clean):
    model, clean = model_and_clean
    kwargs = dict(method="NFT", steps=3, batch_size=16, device="cpu", progress=False)
    plain, mixed = purify(model, clean, mixup_alpha=0.0, **kwargs), purify(model, clean, **kwargs)
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), mixed.state_dict().values()))


def test_study_columns_are_nft_at_other_settings_and_make_portable_file_names():
    table = get_table("nft-study")
    assert table.method("released") == ("NFT", {}) and table.method("No defense") == ("No defense", {})
    for column, (method, settings) in NFT_STUDY_VARIANTS.items():
        create_defense(method, device="cpu", **settings)  # every column's settings are known to NFT
        name = record_path(pd.io.common.Path("out"), get_profile("cpu"), "BadNets", column, 0, 50).name
        assert all(c.isalnum() or c in "._-" for c in name), name
    assert get_table("nft-table1").method("ANP") == ("ANP", {})


def test_study_records_keep_the_masks_statistics(tmp_path):
    records = run_table("nft-study", "smoke", attacks=["BadNets"], defenses=["No defense", "released", "lr 0.5"],
                        output_dir=tmp_path, progress=False)
    cells = records.set_index("defense")
    assert cells.loc["lr 0.5", "overrides"]["lr"] == 0.5 and cells.loc["lr 0.5", "method"] == "NFT"
    masks = mask_table(records)
    assert list(masks["variant"]) == ["released", "lr 0.5"]
    assert (masks["mask_layers"] == 16).all() and masks["below_half_percent"].between(0, 100).all()


def _study(asr_by_variant):
    return pd.DataFrame([{"attack": "BadNets", "variant": v, "seed": 0, "acc": 80.0 - i, "asr": asr, "ra": 0.0,
                          "acc_before": 90.0, "asr_before": 100.0, "below_half_percent": 1.0}
                         for i, (v, asr) in enumerate(asr_by_variant.items())])


def test_findings_name_the_variants_that_remove_the_backdoor_and_say_so_when_none_does():
    text = findings(_study({"released": 99.0, "lr 0.5": 4.0, "no clamp": 60.0}))
    assert "NFT as released: ACC 80.0, ASR 99.0" in text
    assert "ASR at most 10% with: lr 0.5 (ACC 79.0, ASR 4.0)." in text and "Lowest ASR: lr 0.5" in text
    assert "No variant brings the ASR to 10% or below." in findings(_study({"released": 99.0, "lr 0.5": 40.0}))
