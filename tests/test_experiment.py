import math

import pandas as pd
import pytest

from purilib.experiment import run_table
from purilib.reports import summarize, table_outline, to_markdown


def record(attack, defense, seed, acc, asr):
    return {"attack": attack, "defense": defense, "seed": seed, "acc": acc, "asr": asr, "ra": 100 - asr,
            "der": 0.5, "seconds": 1.0, "trainable_params": 10, "clean_images": 500, "clean_per_class": 50,
            "network": "preact_resnet18"}


def test_summary_is_mean_and_std_over_seeds_beside_the_paper():
    records = pd.DataFrame([record("BadNets", "NFT", 0, 90.0, 2.0), record("BadNets", "NFT", 1, 92.0, 4.0),
                            record("Benign", "No defense", 0, 93.0, math.nan)])
    summary = summarize(records, "nft-table1")
    assert list(summary["attack"]) == ["Benign", "BadNets"]  # the table's row order
    nft = summary[summary.defense == "NFT"].iloc[0]
    assert nft.acc == 91.0 and nft.asr == 3.0 and nft.seeds == 2
    assert nft.acc_std == pytest.approx(2 ** 0.5)
    assert nft.delta_acc == pytest.approx(91.0 - nft.paper_acc)
    text = to_markdown(summary, "t", "cpu")
    assert "91.0 ± 1.4" in text and "| Benign | No defense | 50 | – |" in text
    outline = table_outline(summary)
    assert "BadNets     50/class  NFT" in outline and outline.endswith("2 cells; ACC and ASR within [0, 100]: True")
    broken = summary.assign(acc=summary["acc"] * 10)
    assert table_outline(broken).endswith("within [0, 100]: False")


def test_one_shot_rows_are_kept_apart_and_have_no_paper_cell():
    one_shot = {**record("BadNets", "NFT", 0, 80.0, 5.0), "clean_images": 10, "clean_per_class": 1}
    records = pd.DataFrame([record("BadNets", "NFT", 0, 90.0, 2.0), one_shot])
    summary = summarize(records, "nft-table1")
    assert list(summary["clean_per_class"]) == [50, 1]
    assert summary.iloc[0].paper_asr == summary.iloc[0].paper_asr  # not NaN: the paper's 1% cell
    assert math.isnan(summary.iloc[1].paper_asr) and summary.iloc[1].acc == 80.0
    with pytest.raises(ValueError, match="clean_per_class"):
        run_table("nft-table1", clean_per_class=0)


def test_run_table_refuses_names_outside_the_table(tmp_path):
    with pytest.raises(ValueError, match="unknown attacks"):
        run_table("nft-table1", attacks=["Mystery"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown defenses"):
        run_table("nft-table1", defenses=["MagicFix"], output_dir=tmp_path)
    with pytest.raises(ValueError, match="seeds"):
        run_table("nft-table1", seeds=0, output_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown table"):
        run_table("fip-table9", output_dir=tmp_path)


def test_a_table_renders_from_its_records_without_training(tmp_path, monkeypatch):
    """Records made elsewhere (a GPU machine) are tabulated without any model: nothing is trained."""
    import json

    import purilib.cells as cells
    # the run-wide model cache (conftest.py), where the smoke BadNets model is already trained
    grid = dict(attacks=["BadNets"], defenses=["No defense", "FT"], output_dir=tmp_path / "out", device="cpu",
                progress=False)
    made = run_table("defenses", **grid)

    def no_training(*args, **kwargs):
        raise AssertionError("trained although every record exists")
    monkeypatch.setattr(cells, "train_backdoored_model", no_training)
    again = run_table("defenses", from_records=True, **grid)
    columns = ["attack", "defense", "acc", "asr"]
    assert again[columns].sort_values(columns).reset_index(drop=True).equals(
        made[columns].sort_values(columns).reset_index(drop=True))
    with pytest.raises(ValueError, match="NFT.*no record"):
        run_table("defenses", from_records=True, **{**grid, "defenses": ["NFT"]})
    path = next((tmp_path / "out" / "records").glob("BadNets__FT__*.json"))
    record = json.loads(path.read_text())
    record["defense_config"]["lr"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="other settings"):
        run_table("defenses", from_records=True, **grid)


def test_a_record_made_from_other_weights_is_not_reused(tmp_path, capsys):
    """Same recipe, other weights (another machine, a committed record): the cell is computed again."""
    import json
    grid = dict(attacks=["BadNets"], defenses=["No defense"], output_dir=tmp_path / "out", device="cpu",
                progress=False)
    run_table("defenses", **grid)
    assert "1 cells computed, 0 reused" in capsys.readouterr().out
    run_table("defenses", **grid)
    assert "0 cells computed, 1 reused" in capsys.readouterr().out
    path = next((tmp_path / "out" / "records").glob("*.json"))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "weights_digest": "0123456789abcdef", "acc": -1.0}))
    again = run_table("defenses", **grid)
    assert "1 cells computed, 0 reused" in capsys.readouterr().out
    assert again["acc"].iloc[0] == record["acc"]


def test_a_partial_run_merges_into_the_table_and_rows_never_mix_models():
    from purilib.records import merge_records
    earlier = pd.DataFrame([
        {**record("BadNets", "No defense", 0, 90.0, 100.0), "weights_digest": "old", "finished": "1"},
        {**record("BadNets", "NFT", 0, 89.0, 2.0), "weights_digest": "old", "finished": "1"},
        {**record("Blend", "NFT", 0, 88.0, 3.0), "weights_digest": "blend", "finished": "1"}])
    latest = pd.DataFrame([{**record("BadNets", "No defense", 0, 91.0, 100.0), "weights_digest": "new"}])
    merged = merge_records(earlier, latest)
    # Blend's row is kept; BadNets' NFT cell was computed from other weights than the new No-defense cell
    assert sorted(zip(merged["attack"], merged["defense"], merged["acc"])) == [
        ("BadNets", "No defense", 91.0), ("Blend", "NFT", 88.0)]


def test_average_drop_beside_the_papers_printed_and_recomputed_rows():
    from purilib.reports import average_drop
    records = pd.DataFrame([record("BadNets", "No defense", 0, 90.0, 100.0), record("BadNets", "ANP", 0, 80.0, 10.0),
                            record("Blend", "No defense", 0, 92.0, 100.0), record("Blend", "ANP", 0, 86.0, 30.0)])
    drop = average_drop(summarize(records, "nft-table1"), "nft-table1").set_index("defense").loc["ANP"]
    assert drop.attacks == 2 and drop.asr_drop == 80.0 and drop.acc_drop == 8.0
    # the paper's own cells over the same two attacks: BadNets 100 -> 4.87, Blend 100 -> 4.77 (ASR)
    assert drop.paper_asr_drop_same_attacks == pytest.approx((95.13 + 95.23) / 2)
    assert drop.paper_asr_drop_printed == 92.63 and drop.paper_acc_drop_recomputed == 5.94


def test_a_table_over_networks_and_clean_amounts_runs_what_the_profile_reserves(tmp_path, capsys):
    """AWM Table 1: both networks, every amount of clean data the profile holds out (smoke: 10 per class,
    so 500, 100 and 50 are left out, and said so); each network's records are files of their own."""
    with pytest.raises(ValueError) as error:  # no records: the error lists the cells it looked for
        run_table("awm-table1", from_records=True, output_dir=tmp_path, attacks=["BadNets"], defenses=["AWM"])
    assert "[500, 100, 50] clean images per class left out" in capsys.readouterr().out
    assert "4 cells cannot be tabulated" in str(error.value)  # 2 networks x (10, 1) per class
    from purilib.cells import record_path
    from purilib.profiles import resolve
    paths = {record_path(tmp_path, resolve("smoke", model=net), "BadNets", "AWM", 0, 1)
             for net in ("preact_resnet18", "resnet18", "vgg16_bn")}
    assert len(paths) == 3 and any(p.name == "BadNets__AWM__seed0__1per_class.json" for p in paths)


def test_rows_of_different_networks_are_kept_apart():
    vgg = {**record("BadNets", "AWM", 0, 70.0, 9.0), "network": "vgg16_bn"}
    resnet = {**record("BadNets", "AWM", 0, 80.0, 3.0), "network": "resnet18"}
    summary = summarize(pd.DataFrame([resnet, vgg]), "awm-table1")
    assert list(summary["network"]) == ["resnet18", "vgg16_bn"] and list(summary["acc"]) == [80.0, 70.0]
    assert "BadNets (vgg16_bn)" in to_markdown(summary, "t", "smoke")
    assert "vgg16_bn BadNets" in table_outline(summary)
    from purilib import amounts
    text = amounts.markdown(summary)
    assert "| vgg16_bn | BadNets | AWM | 9.0 / 70.0 |" in text


def test_workers_auto_is_one_per_core_where_the_profile_fixes_the_threads(monkeypatch):
    from purilib import experiment
    from purilib.spec import RunSpec
    monkeypatch.setattr(experiment, "cpu_cores", lambda: 2)
    monkeypatch.delenv("PURILIB_WORKERS", raising=False)  # the suite's cap (conftest.py)
    smoke, one_row = RunSpec.build("nft-table1", "smoke"), RunSpec.build("nft-table1", "smoke", attacks=["BadNets"])
    assert experiment.resolve_workers(smoke, "cpu") == 2  # 15 models, one thread each, two cores
    assert experiment.resolve_workers(one_row, "cpu") == 1
    assert experiment.resolve_workers(RunSpec.build("nft-table1", "cpu"), "cpu") == 1  # the cpu profile fixes none
    assert experiment.resolve_workers(smoke, "cuda") == 1
    assert experiment.resolve_workers(RunSpec.build("nft-table1", "cpu", workers=3), "cpu") == 3
    monkeypatch.setenv("PURILIB_WORKERS", "1")  # a cap on "auto" only
    assert experiment.resolve_workers(smoke, "cpu") == 1
    assert experiment.resolve_workers(RunSpec.build("nft-table1", "cpu", workers=3), "cpu") == 3
    monkeypatch.setenv("PURILIB_WORKERS", "two")
    with pytest.raises(ValueError, match="PURILIB_WORKERS must be a positive integer"):
        experiment.resolve_workers(smoke, "cpu")
    with pytest.raises(ValueError, match="workers"):
        RunSpec.build("nft-table1", "cpu", workers=0)
