"""Records with a schema (one migration), and the registries a table names its measurements and report from."""
import json
from pathlib import Path

import pytest

from purilib.measures import MEASURES, identity
from purilib.profiles import resolve
from purilib.records import RECORD_FORMAT, Record, merge_records, migrate, read_record, write_record
from purilib.reports import REPORTS
from purilib.tables import TABLES

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# a record as the first formats wrote it: no network, clean source, method, weights digest or protocols
FORMAT_1 = {"table": "fip-table6", "profile": "cpu", "attack": "BadNets", "defense": "ANP", "seed": 0, "acc": 80.0,
            "asr": 5.0, "ra": 70.0, "der": 0.9, "acc_before": 83.0, "asr_before": 100.0, "seconds": 12.0,
            "trainable_params": 848, "overrides": {}, "model_key": "ba2f", "code_version": "abc",
            "clean_checksum": "c", "defense_config": {"steps": 10}, "clean_images": 500,
            "training_config": {"model": "preact_resnet18", "format": 5}, "torch": "2.9", "device": "cpu",
            "host": "x86_64", "finished": "2026-11-01T10:00:00", "lambda_max": 130.0, "trace": 900.0}


def test_a_format_1_record_reads_in_the_current_format_and_the_file_is_left_alone(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(FORMAT_1))
    record = read_record(path)
    assert record["format"] == RECORD_FORMAT and json.loads(path.read_text()) == FORMAT_1
    assert record["network"] == "preact_resnet18" and record["clean_per_class"] == 50
    assert record["clean_source"] == "reserve" and record["method"] == "ANP" and record["weights_digest"] is None
    assert record["sharpness"] == {"held-out": {"lambda_max": 130.0, "trace": 900.0}}  # before protocols were named
    assert migrate(record) == record  # the current format is a fixed point


def test_a_record_round_trips_through_its_json_with_its_measurements_flat(tmp_path):
    record = Record.from_json(FORMAT_1)
    assert record.measured == {"lambda_max": 130.0, "trace": 900.0,
                               "sharpness": {"held-out": {"lambda_max": 130.0, "trace": 900.0}}}
    data = write_record(tmp_path / "r.json", record)
    assert not list(tmp_path.glob("*.partial")) and data["lambda_max"] == 130.0 and "measured" not in data
    assert Record.from_json(read_record(tmp_path / "r.json")) == record


def test_a_record_from_a_newer_purilib_is_refused():
    with pytest.raises(ValueError, match="upgrade purilib"):
        migrate({**FORMAT_1, "format": RECORD_FORMAT + 1})


def test_merging_reads_the_recipe_key_where_a_record_has_no_weights_digest():
    import pandas as pd
    old = migrate(FORMAT_1)
    new = {**old, "defense": "No defense", "weights_digest": "other", "finished": "2026-12-01T00:00:00"}
    merged = merge_records(pd.DataFrame([old]), pd.DataFrame([new]))
    assert list(merged["defense"]) == ["No defense"]  # the old cell came from another model: not mixed in


@pytest.mark.parametrize("table", TABLES.values(), ids=lambda t: t.id)
def test_every_table_names_a_registered_report_and_registered_measures(table):
    assert table.report[0] in REPORTS
    assert set(table.measures) <= set(MEASURES)
    if table.measures:
        settings = identity(table.measures, resolve("smoke", table.dataset))
        assert settings["names"] == list(table.measures) and "sharpness" in settings


def test_an_unknown_measure_is_one_line():
    with pytest.raises(ValueError, match="unknown measure 'curvature'"):
        identity(("curvature",), resolve("smoke"))


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_notebook_is_a_parameters_cell_and_a_few_calls(notebook):
    """The logic lives in the package: after its parameters, a notebook builds the spec, runs it and shows
    the report, in at most nine lines."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    code = "".join("".join(c["source"]) + "\n" for c in cells[1:])
    assert "RunSpec.from_parameters(" in code and "report.show()" in code and "print(report.outline)" in code
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith(("import", "from"))]
    assert len(lines) <= 9, lines
