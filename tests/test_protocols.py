"""The authors' protocols where they decide results: the clean data's source, FIP's Hessian batch, NFT's
checkpoints, RNP's logged unlearning and pruning."""
import json

import pytest
import torch

from purilib.data import CLEAN_SOURCES, clean_pool, clean_subset, create_dataset, defense_split
from purilib.experiment import run_table
from purilib.reports import sharpness_markdown, summarize
from purilib.hessian import authors_batch, hessian_trace, sharpness
from purilib.reports.protocols import checkpoints_markdown, protocol_markdown, rnp_markdown
from purilib.profiles import get_profile
from purilib.tables import get_table


def test_the_two_sources_are_disjoint_and_overlapping_as_they_should_and_never_draw_a_poisoned_image():
    train = create_dataset("synthetic", "train", num_train=1000)
    attack_idx, reserved = defense_split(train, reserve_fraction=0.1, seed=0)
    poison_idx = attack_idx[torch.randperm(len(attack_idx), generator=torch.Generator().manual_seed(0))[:90]]
    reserve = set(clean_pool("reserve", train.labels, reserved, poison_idx).tolist())
    seen = clean_pool("train", train.labels, reserved, poison_idx, per_class=10)
    assert reserve == set(reserved.tolist())
    assert not reserve & set(seen.tolist())  # the reserve is held out: the model never saw it
    assert set(seen.tolist()) == set(attack_idx.tolist()) - set(poison_idx.tolist())  # seen, minus the poisoned
    for per_class in (1, 10):
        picked = clean_subset(train, seen, per_class, seed=3)
        assert torch.bincount(picked.labels, minlength=10).tolist() == [per_class] * 10  # class-balanced as before
    drawn = seen[torch.randperm(len(seen), generator=torch.Generator().manual_seed(1))[:10]]
    assert not set(drawn.tolist()) & set(poison_idx.tolist())
    with pytest.raises(ValueError, match="unknown clean source"):
        clean_pool("test", train.labels, reserved, poison_idx)
    # a clean-label attack that poisons every image of its target class: the class is topped up with the
    # clean originals of its poisoned images, not left out
    target = attack_idx[train.labels[attack_idx] == 0]
    topped = clean_pool("train", train.labels, reserved, target, per_class=10)
    assert int((train.labels[topped] == 0).sum()) == 10 and set(topped.tolist()) <= set(attack_idx.tolist())
    picked = clean_subset(train, topped, 10, seed=0)
    assert torch.bincount(picked.labels, minlength=10).tolist() == [10] * 10
    with pytest.raises(ValueError, match="class 0 has 0 images"):
        clean_subset(train, clean_pool("train", train.labels, reserved, target), 10, seed=0)
    assert CLEAN_SOURCES == ("reserve", "train")


def test_nft_table1_gives_rnp_the_training_split_and_the_others_the_reserve():
    table = get_table("nft-table1")
    assert table.clean_source("RNP") == "train"
    assert {table.clean_source(c) for c in table.defenses if c != "RNP"} == {"reserve"}


def test_the_authors_hessian_batch_is_training_images_moved_not_changed():
    train = create_dataset("synthetic", "train", num_train=500)
    pool = torch.arange(100, 500)
    batch = authors_batch(train, pool, images=40, padding=1, seed=0)
    assert len(batch) == 40 and batch.images.dtype == torch.uint8
    assert torch.bincount(batch.labels, minlength=10).tolist() == [4] * 10
    again = authors_batch(train, pool, images=40, padding=1, seed=0)
    assert torch.equal(batch.images, again.images)  # seeded
    plain = authors_batch(train, pool, images=40, padding=0, seed=0)
    assert not torch.equal(batch.images, plain.images)  # padding 1: some images shifted by a pixel
    # crop + flip only move pixels (and pad with zeros): every value of a shifted image is one of its own or 0
    for moved, original in zip(batch.images[:5], plain.images[:5]):
        assert set(moved.unique().tolist()) <= set(original.unique().tolist()) | {0}


def test_hutchinson_stops_at_the_tolerance_and_counts_its_samples():
    from tests.test_hessian import small_problem
    model, data = small_problem()
    counted = {}
    full = hessian_trace(model, data, samples=60, seed=0, counted=counted)
    assert counted["samples"] == 60
    early = hessian_trace(model, data, samples=60, seed=0, tol=0.05, counted=counted)
    assert 2 <= counted["samples"] < 60
    assert early[0] != full[0]
    result = sharpness(model, data, iterations=50, samples=60, tol=0.05)
    assert result["hessian_settings"]["hutchinson_samples_drawn"] < 60 and result["hessian_settings"]["tol"] == 0.05


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """nft-table1's RNP and NFT and fip-table6 on the smoke BadNets model (run-wide cache)."""
    out = tmp_path_factory.mktemp("protocols")
    grid = dict(attacks=["BadNets"], device="cpu", progress=False, workers=1)
    table1 = run_table("nft-table1", defenses=["No defense", "RNP", "NFT"], output_dir=out / "t1", **grid)
    table6 = run_table("fip-table6", defenses=["No defense", "ANP"], output_dir=out / "t6", **grid)
    return out, table1, table6


def test_every_record_says_where_its_clean_data_came_from(smoke_runs):
    out, table1, _ = smoke_runs
    by_defense = {r["defense"]: r for r in table1.to_dict("records")}
    assert by_defense["RNP"]["clean_source"] == "train" and by_defense["NFT"]["clean_source"] == "reserve"
    assert by_defense["RNP"]["clean_checksum"] != by_defense["NFT"]["clean_checksum"]  # other images
    text = protocol_markdown(table1, "nft-table1")
    assert "| RNP | the training split" in text and "| NFT | the held-out reserve" in text


def test_rnp_logs_its_unlearning_and_what_each_threshold_would_prune(smoke_runs):
    _, table1, _ = smoke_runs
    stats = table1[table1.defense == "RNP"].iloc[0]["defense_stats"]
    sweep = stats["pruned_by_threshold"]
    assert list(sweep)[:3] == ["0.00", "0.05", "0.10"] and len(sweep) == 19
    counts = list(sweep.values())
    assert counts == sorted(counts) and counts[-1] <= stats["total_neurons"]  # more pruned at a higher threshold
    assert sweep["0.20"] == stats["pruned_neurons"]  # the threshold in use
    assert 1 <= stats["unlearning_steps"] and 0 <= stats["unlearning_accuracy"] <= 1
    assert "| BadNets | train |" in rnp_markdown(table1)


def test_nft_records_its_checkpoints_at_the_released_cadence(smoke_runs, tmp_path):
    from purilib.defenses import create_defense
    _, table1, _ = smoke_runs
    nft = table1[table1.defense == "NFT"].iloc[0]
    steps = get_profile("smoke").defense_overrides["*"]["steps"]  # smoke runs 5 steps: no checkpoint
    assert create_defense("NFT").checkpoint_every == 200 and steps < 200
    assert "checkpoints" not in nft["defense_stats"]
    # at 400 steps (few images, so quickly), two checkpoints, and they leave the run as it was
    out = tmp_path / "long"
    run = lambda **kw: run_table("nft-study", attacks=["BadNets"], defenses=["released"], device="cpu",  # noqa: E731
                                 progress=False, workers=1, **kw)
    import purilib.profiles as profiles
    smoke = profiles.PROFILES["smoke"]
    longer = {**smoke.defense_overrides, "NFT": dict(steps=400, batch_size=8)}
    try:
        profiles.PROFILES["smoke"] = __import__("dataclasses").replace(smoke, defense_overrides=longer)
        record = run(output_dir=out).iloc[0]
    finally:
        profiles.PROFILES["smoke"] = smoke
    points = record["defense_stats"]["checkpoints"]
    assert [p["step"] for p in points] == [200, 400]
    assert all(0 <= p["asr"] <= 100 and 0 <= p["acc"] <= 100 for p in points)
    assert "step 200 | step 400" in checkpoints_markdown(pd_frame([record]))


def pd_frame(rows):
    import pandas as pd
    return pd.DataFrame(rows)


def test_fip_table6_measures_both_sharpness_protocols_and_prints_the_ratios(smoke_runs):
    out, _, table6 = smoke_runs
    for r in table6.to_dict("records"):
        assert set(r["sharpness"]) == {"authors", "held-out"} and r["sharpness_protocol"] == "authors"
        assert r["lambda_max"] == r["sharpness"]["authors"]["lambda_max"]  # the headline is the authors'
        assert r["sharpness"]["authors"]["hessian_images"] == 40  # smoke's cap of the authors' 200
        assert r["sharpness"]["held-out"]["hessian_images"] == r["clean_images"]
        assert "training images" in r["sharpness"]["authors"]["hessian_data"]
    summary = summarize(table6, "fip-table6")
    assert {"lambda_max_authors", "lambda_max_held-out"} <= set(summary)
    text = sharpness_markdown(summary, "t", "smoke")
    assert "λmax authors | λmax held-out | λmax paper" in text and "## Flattening" in text
    assert "| BadNets | ANP |" in text.split("## Flattening")[1]
    record = json.loads(next((out / "t6" / "records").glob("BadNets__ANP__*.json")).read_text())
    assert record["clean_source"] == "reserve"


def test_profiles_key_attack_budgets_by_registry_name_the_one_name_of_each_attack():
    from purilib.attacks import ATTACKS
    from purilib.profiles import IMAGENET, PROFILES, training_settings
    for profile in PROFILES.values():
        assert set(profile.attack_overrides) <= set(ATTACKS), profile.name
    assert set(IMAGENET["smoke"]["attack_overrides"]) <= set(ATTACKS)
    assert all(cls.name == name for name, cls in ATTACKS.items())  # the registry name is the attack's own
    smoke = PROFILES["smoke"]
    assert training_settings(smoke, "Dyn-all")["attack_kwargs"] == smoke.attack_overrides["Dynamic"]
