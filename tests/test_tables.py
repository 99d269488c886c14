"""The table registry, FIP Figure 4's runtimes gathered from records, and --list / unknown ids."""
import json
import re
import subprocess
import sys

import pytest

from purilib import runtime
from purilib.tables import TABLES, get_table, published, resolve_tables


def test_short_names_resolve_and_unknown_ids_suggest_the_closest():
    assert [t.id for t in resolve_tables("table6")] == ["fip-table6"]
    assert [t.id for t in resolve_tables("figure4")] == ["fip-figure4"]
    assert [t.id for t in resolve_tables("table1")] == ["nft-table1", "awm-table1"]  # Table 1 of every paper
    assert [t.id for t in resolve_tables("figure1")] == ["fip-figure1", "nft-figure1"]
    with pytest.raises(ValueError, match="did you mean 'table6'"):
        resolve_tables("tabel6")


def test_list_names_every_id_with_its_paper():
    listing = subprocess.run([sys.executable, "-m", "purilib.cli", "list"], capture_output=True, text=True).stdout
    for table in TABLES.values():
        assert re.search(rf"^  {re.escape(table.id)} +{re.escape(table.paper)}: ", listing, re.M), table.id
    # a table whose smoke run takes fewer rows says which, and the ImageNet half says what it runs on
    assert "on smoke, unless --attacks names rows: BadNets, Blend" in listing
    assert "ImageNet; profiles smoke, gpu" in listing


def test_fip_table6_reads_the_sharpness_and_maps_the_attack_names():
    paper = published(get_table("fip-table6"))
    assert paper[("BadNets", "No defense")]["lambda_max"] == 573.8
    assert paper[("Troj-one", "FIP")]["trace_hessian"] > 0 and ("Trojan", "FIP") not in paper


def _record(folder, attack, defense, seconds, method=None, digest="w", finished="2026-01-01", hardware="cpu X"):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"attack": attack, "defense": defense, "seed": 0, "seconds": seconds, "device_name": hardware,
              "load_average_1min": 2.0, "weights_digest": digest, "finished": finished,
              "method": method or defense, "training_config": {"format": 5}, "clean_images": 500}
    (folder / f"{attack}__{defense}.json").write_text(json.dumps(record))


def test_runtimes_average_each_defense_over_the_records_of_every_table(tmp_path):
    _record(tmp_path / "nft-table1" / "cpu" / "records", "BadNets", "ANP", 100.0)
    _record(tmp_path / "defenses" / "cpu" / "records", "Blend", "ANP", 300.0)
    _record(tmp_path / "defenses" / "cpu" / "records", "BadNets", "ANP", 999.0, finished="2025-01-01")  # older copy
    _record(tmp_path / "nft-study" / "cpu" / "records", "BadNets", "lr 0.5", 5.0, method="NFT")  # a variant
    _record(tmp_path / "defenses" / "cpu" / "records", "BadNets", "No defense", 0.0)
    _record(tmp_path / "defenses" / "gpu" / "records", "BadNets", "FIP", 7.0)  # another profile
    _record(tmp_path / "defenses" / "cpu" / "records", "Blend", "RNP", 9.0, hardware="")  # unknown hardware
    _record(tmp_path / "nft-table1-imagenet" / "cpu" / "records", "WaNet", "FIP", 50.0)  # ImageNet: not comparable
    table = runtime.average(runtime.collect("cpu", tmp_path), get_table("fip-figure4").defenses).set_index("defense")
    assert table.loc["ANP", "seconds"] == 200.0 and table.loc["ANP", "records"] == 2
    assert table.loc["ANP", "attacks"] == "BadNets, Blend" and table.loc["ANP", "paper_seconds"] == 118.1
    assert table.loc["FIP", "records"] == 0 and table.loc["FIP", "paper_seconds"] == 20.8
    assert table.loc["RNP", "records"] == 0


def test_the_index_summarises_each_table_and_keeps_the_prose_around_it(tmp_path):
    from purilib.index import write_index
    folder = tmp_path / "nft-table1" / "cpu" / "records"
    folder.mkdir(parents=True)
    base = {"seed": 0, "ra": 0.0, "der": 0.5, "seconds": 1.0, "trainable_params": 1, "clean_images": 500,
            "clean_per_class": 50, "profile": "cpu", "finished": "2026-11-30T10:00:00", "code_version": "abcdef123456",
            "device_name": "NVIDIA H200"}
    for defense, asr, acc in (("No defense", 100.0, 90.0), ("ANP", 10.0, 80.0)):
        (folder / f"BadNets__{defense}.json").write_text(json.dumps({**base, "attack": "BadNets", "defense": defense,
                                                                       "asr": asr, "acc": acc}))
    (tmp_path / "README.md").write_text("# Results\n\nprose kept\n")
    text = write_index(tmp_path).read_text()
    write_index(tmp_path)  # rewritten in place, not appended twice
    assert "prose kept" in text and (tmp_path / "README.md").read_text().count("| nft-table1 | cpu |") == 1
    # BadNets' published cells: none 100 / 92.96, ANP 4.87 / 85.92
    assert "| nft-table1 | cpu | 2 | 55.0 / 52.4 (2) | 85.0 / 89.4 (2) | 2026-11-30 | abcdef1 | NVIDIA H200 |" in text


def test_notebooks_embed_a_small_palette_copy_of_the_figure():
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from purilib.reports import compact_png
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.imshow([[i * j for i in range(40)] for j in range(40)], cmap="Reds")
    plain = io.BytesIO()
    fig.savefig(plain, format="png", dpi=90)
    small = compact_png(fig)
    plt.close(fig)
    assert Image.open(io.BytesIO(small)).mode == "P" and len(small) < len(plain.getvalue())


@pytest.mark.parametrize("table_id", sorted(TABLES))
def test_the_rows_a_profile_runs_by_default_are_rows_of_the_table(table_id):
    table = get_table(table_id)
    for profile, rows in (table.default_rows or {}).items():
        assert profile in table.profiles and rows and set(rows) <= set(table.attacks)
    assert table.rows("paper") == table.attacks  # every profile but the ones named runs every row


def test_smoke_runs_fewer_rows_of_the_large_figures_only():
    assert get_table("fip-table6").rows("smoke") == ("BadNets", "Blend")
    assert get_table("fip-table6").rows("cpu") == get_table("fip-table6").attacks
    assert get_table("nft-table1").rows("smoke") == get_table("nft-table1").attacks  # the default run: all 15
