"""The attack suite's table and gallery on the smoke profile (models cached per test session)."""
import matplotlib
import torch

from purilib import attack_report
from purilib.data import ImageSet
from purilib.profiles import get_profile, resolve

matplotlib.use("Agg")


def test_attack_table_reports_each_model_against_the_benign_one():
    table = attack_report.run_attack_table(resolve("smoke"), attacks=["Benign", "Blend"], device="cpu")
    assert list(table["attack"]) == ["Benign", "Blend"]
    benign, blend = table.iloc[0], table.iloc[1]
    assert benign.acc_drop_vs_benign == 0 and blend.acc_drop_vs_benign == round(benign.acc - blend.acc, 2)
    assert blend.paper_asr == 100.0 and blend.asr > 12  # the paper's no-defense cell; measured 36 (2 threads) and 20 (1 thread); a clean model ~1
    assert "| Blend |" in attack_report.to_markdown(table, "smoke")


def test_gallery_has_three_rows_per_attack():
    figure = attack_report.gallery(["Benign", "BadNets", "Blend"], resolve("smoke"), device="cpu")
    assert len(figure.axes) == 6
    # the BadNets difference image is non-zero only in the bottom-right patch (the smoke profile's size)
    size = get_profile("smoke").attack_overrides["BadNets"]["size"]
    difference = figure.axes[4].images[0].get_array()
    assert difference[-size:, -size:].any()
    assert not difference[:-size, :].any() and not difference[:, :-size].any()


def test_the_composite_gallery_column_draws_from_every_class_of_a_class_sorted_test_set():
    sorted_by_class = ImageSet(torch.zeros(2000, 3, 32, 32, dtype=torch.uint8), torch.arange(10).repeat_interleave(200))
    subset = attack_report.mixed_subset(sorted_by_class)
    assert len(subset) == 1000 and set(subset.labels.tolist()) == set(range(10))
