"""A cell's record: :class:`Record`, its format version, and the one migration older records go through.

A record is one JSON file per cell (``<output_dir>/records/<attack>__<defense>__seed<N>[...].json``),
written atomically when the cell ends.  Its fields are the cell's numbers, what it was computed from
(the weights, the code, the clean data, the defense's settings: a finished record is reused only when
all of these match) and where it ran; ``measured`` holds what the table measures beyond ACC / ASR
(sharpness, a spectrum, a trajectory, t-SNE, ...), flat in the JSON beside the other fields.

Every record is read through :func:`migrate`, which brings one written in an earlier format to this
one, so that nothing downstream tests for a missing field.  Format 1 is every record written before
records named their format.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

RECORD_FORMAT = 2


@dataclasses.dataclass
class Record:
    table: str
    profile: str
    attack: str
    defense: str                # the table's column
    seed: int
    acc: float                  # percent, after the defense
    asr: float                  # percent (NaN for the benign model)
    ra: float                   # robust accuracy: triggered images classified as their true class
    der: float                  # defense effectiveness rating, in [0, 1]
    acc_before: float
    asr_before: float
    seconds: float              # the defense's wall seconds (callbacks excluded)
    trainable_params: int
    overrides: dict             # the settings the column and the profile gave the defense
    method: str                 # the defense the column runs (a study's variants run one method)
    network: str
    defense_stats: dict         # what the defense logged (masks, steps, pruned neurons, checkpoints ...)
    model_key: str              # the training recipe's cache key
    weights_digest: str         # the model's weights (another machine trains other weights from one recipe)
    code_version: str
    clean_checksum: str
    clean_source: str           # data.CLEAN_SOURCES
    defense_config: dict        # the defense's full settings
    clean_images: int
    clean_per_class: int
    training_config: dict
    torch: str
    device: str
    device_name: str
    host: str
    finished: str
    load_average_1min: float    # wall seconds mean little on a busy machine
    measures: dict = None       # the measurements' settings, where the table measures more than ACC / ASR
    measured: dict = dataclasses.field(default_factory=dict)  # their results, flat in the JSON
    format: int = RECORD_FORMAT

    def to_json(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "measured"}
        if fields["measures"] is None:
            del fields["measures"]
        return {**fields, **self.measured}

    @classmethod
    def from_json(cls, raw: dict) -> "Record":
        data = migrate(raw)
        names = {f.name for f in dataclasses.fields(cls)} - {"measured"}
        return cls(**{name: data.get(name) for name in names if name != "format"},
                   measured={k: v for k, v in data.items() if k not in names})


def migrate(raw: dict) -> dict:
    """``raw`` (a record of any format) in the current format; the file itself is left as it is."""
    record = dict(raw)
    if record.get("format", 1) > RECORD_FORMAT:
        raise ValueError(f"a record of format {record['format']}: this purilib reads up to {RECORD_FORMAT} "
                         "(upgrade purilib)")
    if record.get("format", 1) < 2:
        config = record.get("training_config") if isinstance(record.get("training_config"), dict) else {}
        if "clean_per_class" not in record:
            record["clean_per_class"] = record["clean_images"] // 10  # CIFAR-10's ten classes then
        if not isinstance(record.get("network"), str):
            record["network"] = config.get("model", "")
        record.setdefault("clean_source", "reserve")  # the only source before the setting existed
        record.setdefault("method", record["defense"])
        record.setdefault("weights_digest", None)  # the recipe's key stands in (Record.weights)
        if "lambda_max" in record and not isinstance(record.get("sharpness"), dict):
            # measured over the defenses' clean set before the protocols were named: the "held-out" one
            record["sharpness"] = {"held-out": {"lambda_max": record["lambda_max"], "trace": record["trace"]}}
        record.setdefault("device_name", None)  # hardware unnamed: its seconds are left out of FIP Figure 4
        record.setdefault("defense_stats", {})
        record["format"] = 2
    return record


def weights(record: dict) -> str:
    """Which model a record was computed on: its weights' digest, else (older records) its recipe's key."""
    return record.get("weights_digest") or record.get("model_key")


def read_record(path) -> dict:
    return migrate(json.loads(Path(path).read_text()))


def write_record(path, record: Record) -> dict:
    """``record`` written to ``path`` atomically (a killed run leaves no half file); returns its JSON."""
    data = record.to_json()
    partial = Path(path).with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1, default=float))
    partial.replace(path)
    return data


def load_records(output_dir) -> pd.DataFrame:
    """Every record of ``<output_dir>/records/``, migrated."""
    return pd.DataFrame([read_record(p) for p in sorted(Path(output_dir).glob("records/*.json"))])


def merge_records(earlier: pd.DataFrame, latest: pd.DataFrame) -> pd.DataFrame:
    """The table's records: ``latest`` (this run's cells) with the ``earlier`` ones of the folder that it
    does not replace, so that a partial run adds its rows to the table instead of replacing it.  A row
    (network, attack, seed, clean images per class) never mixes models: where its records were computed
    from different weights, only those of the latest run (else of the latest finished record) are kept."""
    if len(earlier) and "finished" in earlier:
        earlier = earlier.sort_values("finished", ascending=False, kind="stable")
    frame = pd.concat([latest, earlier], ignore_index=True) if len(earlier) else latest.copy()
    if frame.empty:
        return frame
    frame = frame.drop_duplicates(["network", "attack", "defense", "seed", "clean_per_class"], keep="first")
    frame = frame.assign(_model=[weights(r) or "" for r in frame.to_dict("records")], _order=range(len(frame)))
    kept = []
    for _, row in frame.groupby(["network", "attack", "seed", "clean_per_class"], sort=False):
        kept.append(row[row["_model"] == row["_model"].iloc[0]])  # groups keep the frame's order
    return pd.concat(kept).sort_values("_order").drop(columns=["_model", "_order"]).reset_index(drop=True)
