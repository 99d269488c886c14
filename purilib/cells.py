"""One cell of a table: a defense on a row's model, measured and recorded.

A row is one (attack, seed): its model (trained, or loaded from the cache), its clean subset and test
set, and its metrics before defense, measured when a cell first needs them (``prepare_row``).
``run_cell`` runs one column's defense on it (``column_defense``: a defense, or a study's variant of
one), measures what the table asks for (sharpness, a trajectory, a spectrum, a training history), and
writes the cell's record, atomically; a finished record is reused only when it was made from the same
weights, code, clean data and settings.  The sequential runner (``experiment.run_table``) and the
parallel one (``executor``) both go through here, so their records are the same.
"""
import dataclasses
import functools
import json
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from . import features, spectra, trajectory
from .data import clean_subset
from .defenses import NO_DEFENSE, create_defense
from .devices import device_name
from .hessian import sharpness
from .metrics import defense_effectiveness_rating, evaluate
from .profiles import defense_overrides, for_dataset, get_profile, training_settings
from .provenance import code_version
from .training import load_training_data, restore_attack, train_backdoored_model


def resolve_profile(profile, model=None, dataset="CIFAR-10"):
    """The profile as it stands for ``dataset`` (a table's: "CIFAR-10" or "ImageNet"), its network replaced
    by ``model`` when one is given."""
    prof = for_dataset(get_profile(profile), dataset)
    return dataclasses.replace(prof, training={**prof.training, "model": model}) if model is not None else prof


@dataclasses.dataclass
class Row:
    """What every cell of one (attack, seed) row shares: the model and its data."""
    attack_name: str
    model: torch.nn.Module
    manifest: dict
    attack: object
    clean: object
    test: object
    device: str
    bf16: bool

    @functools.cached_property
    def before(self) -> dict:
        """The model's metrics before any defense: measured when a cell first needs them, so that a row
        whose records are all reused evaluates nothing."""
        return evaluate(self.model, self.test, self.attack, device=self.device, bf16=self.bf16)


def snapshot_every(table, prof):
    """How often the table's models keep a snapshot while training (FIP Figure 1's history), or None."""
    return prof.history["every"] if "history" in table.measures else None


def prepare_row(prof, attack_name, seed, clean_per_class, device, data_root=None, cache_dir=None,
                snapshots=None) -> Row:
    """Train (or load from cache) the row's model (keeping a snapshot every ``snapshots`` epochs); its
    clean subset and test set (its metrics before defense, ``Row.before``, are measured when a computed
    cell first needs them)."""
    model, manifest = train_backdoored_model(attack=attack_name, seed=seed, device=device, data_root=data_root,
                                             cache_dir=cache_dir, snapshot_every=snapshots,
                                             **training_settings(prof, attack_name))
    train, _, test, attack, _, reserved = load_training_data(manifest["config"], data_root, cache_dir, device)
    restore_attack(attack, manifest, cache_dir)
    clean = clean_subset(train, reserved, clean_per_class, seed=seed)
    return Row(attack_name, model, manifest, attack, clean, test, device, prof.bf16)


def record_path(out, prof, attack_name, defense_name, seed, per_class) -> Path:
    shots = "" if per_class == prof.clean_per_class else f"__{per_class}per_class"
    network = prof.training["model"]  # another network than the profile's: records of its own
    shots += "" if network == resolve_profile(prof.name, dataset=prof.dataset).training["model"] else f"__{network}"
    column = re.sub(r"[^A-Za-z0-9._-]", "_", defense_name)  # file names portable everywhere
    return out / "records" / f"{attack_name}__{column}__seed{seed}{shots}.json"


def column_defense(table, prof, column, **kwargs):
    """The defense a column runs (None for 'No defense') and the settings the column and the profile
    override (the profile's last: the smoke profile's budget shrinks a study's columns too)."""
    name, settings = table.method(column)
    if name == NO_DEFENSE:
        return None, {}
    overrides = {**settings, **defense_overrides(prof, name)}
    return create_defense(name, **kwargs, **overrides), overrides


def as_json(value):
    return json.loads(json.dumps(value, default=float))


def run_cell(table, prof, attack_name, defense_name, seed, row, device, out, progress, cache_dir=None):
    model, manifest, attack, clean, test = row.model, row.manifest, row.attack, row.clean, row.test
    per_class = len(clean) // clean.num_classes
    path = record_path(out, prof, attack_name, defense_name, seed, per_class)
    defense, overrides = column_defense(table, prof, defense_name, device=device, bf16=prof.bf16, seed=seed,
                                  progress=progress)
    # a finished record is reused only if it was computed from these very weights (not only the same
    # recipe: another machine trains other weights from it), by this code, on the same clean data, with
    # the defense's full settings
    identity = {"model_key": manifest["key"], "weights_digest": manifest["weights_digest"],
                "code_version": code_version(), "clean_checksum": clean.checksum(),
                "defense_config": as_json(defense.config if defense else {})}
    if table.measures:  # sharpness and trajectory always, as records made before the others existed have them
        identity["measures"] = as_json({"names": list(table.measures), "sharpness": prof.sharpness,
                                         "trajectory": prof.trajectory,
                                         **{m: getattr(prof, m) for m in ("spectrum", "history", "features")
                                            if m in table.measures}})
    if path.exists():
        record = json.loads(path.read_text())
        if all(record.get(k) == v for k, v in identity.items()):
            record["reused"] = True
            return record  # finished in an earlier run
    before = row.before
    trainable, seconds, after, stats, purified, points = 0, 0.0, before, {}, model, []
    if defense is not None and "trajectory" in table.measures:  # FIP Figure 3: measured along the defense
        t = prof.trajectory
        subset = trajectory.test_subset(test, t["test_images"])
        points.append(trajectory.start_point(model, clean, subset, attack, t["iterations"], device, prof.bf16))
        defense.callback = trajectory.recorder(points, clean, subset, attack, max(1, defense.config["steps"] //
                                               t["points"]), t["iterations"], device, prof.bf16)
    if defense is not None:
        purified = defense.purify(model, clean)
        after = evaluate(purified, test, attack, device=device, bf16=prof.bf16)
        stats = dict(defense.stats)
        trainable, seconds = stats.pop("trainable_params"), stats.pop("seconds")
    measured = {}
    if "sharpness" in table.measures:  # on the defenses' clean set: the data every defense was given
        measured = sharpness(purified, clean, seed=seed, data_name="the defenses' clean set", **prof.sharpness)
    if "spectrum" in table.measures:  # FIP Figure 1 (a, b)
        measured.update(spectra.spectrum(purified, clean, seed=seed, **prof.spectrum))
    if "features" in table.measures:  # FIP Figure 5, NFT Figure 1: t-SNE of the features
        measured.update(features.measure(purified, test, attack, seed=seed, **prof.features))
    if "history" in table.measures:  # FIP Figure 1 (c): the snapshots of the model's training
        measured["history"] = spectra.history(model, manifest, clean, test, attack, device=device, bf16=prof.bf16,
                                              cache_dir=cache_dir, **prof.history)
    der = np.nan
    if attack is not None:
        der = defense_effectiveness_rating(before["asr"], after["asr"], before["acc"], after["acc"])
    record = {
        "table": table.id, "profile": prof.name, "attack": attack_name, "defense": defense_name, "seed": seed,
        "acc": after["acc"], "asr": after.get("asr", np.nan), "ra": after.get("ra", np.nan), "der": der,
        "acc_before": before["acc"], "asr_before": before.get("asr", np.nan), "seconds": round(seconds, 2),
        "trainable_params": trainable, "overrides": overrides, "method": defense.name if defense else NO_DEFENSE,
        "network": prof.training["model"],
        "defense_stats": as_json(stats), **as_json(measured), **identity,
        **({"trajectory": as_json(points)} if points else {}),
        "clean_images": len(clean), "clean_per_class": per_class, "training_config": manifest["config"],
        "torch": torch.__version__, "device": device, "device_name": device_name(device),
        "host": platform.machine(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_1min": round(os.getloadavg()[0], 2),  # wall seconds mean little on a busy machine
    }
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=1, default=float))
    partial.replace(path)
    return record
