"""One cell of a table: a defense on a row's model, measured and recorded.

A row is one (attack, seed): its model (trained, or loaded from the cache), its clean subset and test
set, and its metrics before defense, measured when a cell first needs them (``prepare_row``).
``run_cell`` runs one column's defense on it (``column_defense``: a defense, or a study's variant of
one), measures what the table asks for (sharpness, a trajectory, a spectrum, a training history), and
writes the cell's record, atomically; a finished record is reused only when it was made from the same
weights, code, clean data and settings.  The sequential runner (``experiment.run_table``) and the
parallel one (``executor``) both go through here, so their records are the same; ``recorded_cells``
gathers the records of cells made elsewhere (``--from-records``), checked against the same recipe and
settings.
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

from . import measures, trajectory
from .data import clean_pool, clean_subset
from .defenses import NO_DEFENSE, create_defense
from .devices import device_name
from .hessian import SHARPNESS_PROTOCOLS, authors_batch
from .metrics import defense_effectiveness_rating, evaluate
from .profiles import defense_overrides, training_settings
from .provenance import code_version
from .records import Record, read_record, weights, write_record
from .settings import compiled_defenses
from .training import load_training_data, restore_attack, train_backdoored_model


@dataclasses.dataclass
class Row:
    """What every cell of one (attack, seed) row shares: the model and its data.  ``train``, ``reserved``
    and ``poison_idx``: the full training split, its reserve and its poisoned images, from which each
    column's clean set (``clean_set``) and the Hessian's data (``hessian_data``) are drawn."""
    attack_name: str
    model: torch.nn.Module
    manifest: dict
    attack: object
    train: object
    reserved: torch.Tensor
    poison_idx: torch.Tensor
    clean_per_class: int
    seed: int
    test: object
    device: str
    bf16: bool
    _clean: dict = dataclasses.field(default_factory=dict, repr=False)

    @functools.cached_property
    def before(self) -> dict:
        """The model's metrics before any defense: measured when a cell first needs them, so that a row
        whose records are all reused evaluates nothing."""
        return evaluate(self.model, self.test, self.attack, device=self.device, bf16=self.bf16)

    def clean_set(self, source="reserve"):
        """The defenses' clean set drawn from ``source`` (``data.CLEAN_SOURCES``): the same images for every
        column of the row that draws from that source."""
        if source not in self._clean:
            pool = clean_pool(source, self.train.labels, self.reserved, self.poison_idx, self.clean_per_class)
            self._clean[source] = clean_subset(self.train, pool, self.clean_per_class, seed=self.seed)
        return self._clean[source]

    def hessian_data(self, protocol, settings, clean):
        """(images, what they are) for the Hessian measurements of ``protocol`` (hessian.SHARPNESS_PROTOCOLS):
        the FIP authors' augmented batch of training images, or ``clean``, the column's clean set."""
        if protocol == "authors":
            key = ("authors", settings["images"], settings["padding"])
            if key not in self._clean:  # one batch per row, for every column and measurement
                per_class = max(1, settings["images"] // self.train.num_classes)
                pool = clean_pool("train", self.train.labels, self.reserved, self.poison_idx, per_class)
                self._clean[key] = authors_batch(self.train, pool, settings["images"], settings["padding"],
                                                 seed=self.seed)
            batch = self._clean[key]
            return batch, (f"{len(batch)} clean training images, crop (padding {settings['padding']}) + flip "
                           "(the FIP authors' batch)")
        if protocol == "held-out":
            return clean, "the defenses' clean set"
        raise ValueError(f"unknown sharpness protocol {protocol!r}; choose one of {SHARPNESS_PROTOCOLS}")


def snapshot_every(table, prof):
    """How often the table's models keep a snapshot while training (FIP Figure 1's history), or None."""
    return prof.history["every"] if "history" in table.measures else None


def train_row_model(prof, attack_name, seed, device, data_root=None, cache_dir=None, snapshots=None) -> tuple:
    """The row's model, trained by the profile's recipe (or loaded from the cache): ``(model, manifest)``."""
    return train_backdoored_model(attack=attack_name, seed=seed, device=device, data_root=data_root,
                                  cache_dir=cache_dir, snapshot_every=snapshots, **training_settings(prof, attack_name))


def prepare_row(prof, attack_name, seed, clean_per_class, device, data_root=None, cache_dir=None,
                snapshots=None) -> Row:
    """Train (or load from cache) the row's model (keeping a snapshot every ``snapshots`` epochs); its
    clean subset and test set (its metrics before defense, ``Row.before``, are measured when a computed
    cell first needs them)."""
    model, manifest = train_row_model(prof, attack_name, seed, device, data_root, cache_dir, snapshots)
    data = load_training_data(manifest["config"], data_root, cache_dir, device)
    restore_attack(data.attack, manifest, cache_dir)
    return Row(attack_name, model, manifest, data.attack, data.train, data.reserved, data.poison_idx, clean_per_class,
               seed, data.test, device, prof.bf16)


def record_path(out, prof, attack_name, defense_name, seed, per_class) -> Path:
    shots = "" if per_class == prof.clean_per_class else f"__{per_class}per_class"
    shots += "" if prof.own_network else f"__{prof.network}"  # another network than the profile's: records of its own
    column = re.sub(r"[^A-Za-z0-9._-]", "_", defense_name)  # file names portable everywhere
    return out / "records" / f"{attack_name}__{column}__seed{seed}{shots}.json"


def column_defense(table, prof, column, **kwargs):
    """The defense a column runs (None for 'No defense') and the settings the column and the profile
    override (the profile's last: the smoke profile's budget shrinks a study's columns too)."""
    name, settings = table.method(column)
    if name == NO_DEFENSE:
        return None, {}
    overrides = {**settings, **defense_overrides(prof, name)}
    compile = "auto" if name in compiled_defenses() else False  # same method, its loop compiled (on CUDA)
    return create_defense(name, compile=compile, **kwargs, **overrides), overrides


def as_json(value):
    return json.loads(json.dumps(value, default=float))


def run_cell(table, prof, attack_name, defense_name, seed, row, device, out, progress, cache_dir=None) -> dict:
    """The column's defense on the row's model, measured (``Table.measures``: ``measures.MEASURES``) and
    recorded (``records.Record``); a finished record of the same identity is returned instead."""
    source = table.clean_source(defense_name)
    model, manifest, attack, clean, test = row.model, row.manifest, row.attack, row.clean_set(source), row.test
    per_class = len(clean) // clean.num_classes
    path = record_path(out, prof, attack_name, defense_name, seed, per_class)
    defense, overrides = column_defense(table, prof, defense_name, device=device, bf16=prof.bf16, seed=seed,
                                        progress=progress)
    # a finished record is reused only if it was computed from these very weights (not only the same
    # recipe: another machine trains other weights from it), by this code, on the same clean data, with
    # the defense's full settings and the measurements' settings
    identity = {"model_key": manifest["key"], "weights_digest": manifest["weights_digest"],
                "code_version": code_version(), "clean_checksum": clean.checksum(), "clean_source": source,
                "defense_config": as_json(defense.config if defense else {})}
    if table.measures:
        identity["measures"] = as_json(measures.identity(table.measures, prof))
    if path.exists():
        record = read_record(path)
        if all(record.get(k) == v for k, v in identity.items()):
            record["reused"] = True
            return record  # finished in an earlier run
    before = row.before
    chosen = [measures.MEASURES[name] for name in table.measures]
    cell = measures.Cell(prof, row, clean, defense, seed, device, cache_dir, purified=model)
    if any(m.hessian_data for m in chosen):  # the headline sharpness protocol's data
        headline = next(iter(prof.sharpness))
        cell.hessian_images, cell.hessian_name = row.hessian_data(headline, prof.sharpness[headline], clean)
    for m in chosen:
        if m.during:
            m.during(cell)
    checkpoints = []
    if defense is not None and defense.callback is None and defense.checkpoint_every and attack is not None:
        subset = trajectory.test_subset(test, prof.trajectory["test_images"])  # e.g. NFT's, every 200 steps
        defense.callback = trajectory.checkpoint_recorder(checkpoints, subset, attack, defense.checkpoint_every,
                                                          device, prof.bf16)
    trainable, seconds, after, stats = 0, 0.0, before, {}
    if defense is not None:
        cell.purified = defense.purify(model, clean)
        after = evaluate(cell.purified, test, attack, device=device, bf16=prof.bf16)
        stats = dict(defense.stats)
        trainable, seconds = stats.pop("trainable_params"), stats.pop("seconds")
        if checkpoints:
            stats["checkpoints"] = checkpoints
    measured = {}
    for m in chosen:
        measured.update(m.after(cell))
    if cell.hessian_name:
        measured["figure_hessian_data"] = cell.hessian_name
    der = np.nan
    if attack is not None:
        der = defense_effectiveness_rating(before["asr"], after["asr"], before["acc"], after["acc"])
    record = Record(
        table=table.id, profile=prof.name, attack=attack_name, defense=defense_name, seed=seed,
        acc=after["acc"], asr=after.get("asr", np.nan), ra=after.get("ra", np.nan), der=der,
        acc_before=before["acc"], asr_before=before.get("asr", np.nan), seconds=round(seconds, 2),
        trainable_params=trainable, overrides=overrides, method=defense.name if defense else NO_DEFENSE,
        network=prof.network, defense_stats=as_json(stats), **identity,
        clean_images=len(clean), clean_per_class=per_class, training_config=manifest["config"],
        torch=torch.__version__, device=device, device_name=device_name(device), host=platform.machine(),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average_1min=round(os.getloadavg()[0], 2),
        measured=as_json(measured))
    return write_record(path, record)


def recorded_cells(table, prof, attacks, defenses, seeds, clean_per_class, out):
    """The records of the requested cells, checked against the recipe and the settings they should have
    been made with, and a line for each cell that has none (``--from-records``)."""
    records, missing = [], []
    for seed in range(seeds):
        for attack_name in attacks:
            row = []  # a row's cells must come from one model (one set of weights)
            recipe = as_json(training_settings(prof, attack_name))
            for defense_name in defenses:
                path = record_path(out, prof, attack_name, defense_name, seed, clean_per_class)
                defense, _ = column_defense(table, prof, defense_name, device="cpu", seed=seed)
                settings = as_json(defense.config) if defense else {}
                record = read_record(path) if path.exists() else None
                cell = f"{attack_name} x {defense_name} (seed {seed}, {path.name})"
                if record is None:
                    missing.append(f"{cell}: no record")
                elif any(record["training_config"].get(k) != v for k, v in recipe.items()):
                    missing.append(f"{cell}: made with another recipe")
                elif record["defense_config"] != settings:
                    missing.append(f"{cell}: made with other settings")
                elif record["clean_source"] != table.clean_source(defense_name):
                    missing.append(f"{cell}: made with clean data from the {record['clean_source']}, "
                                   f"not the {table.clean_source(defense_name)}")
                else:
                    row.append(record)
            digests = {weights(r) for r in row}
            if len(digests) > 1:
                missing.append(f"{attack_name} (seed {seed}): its records come from {len(digests)} different models")
            else:
                records += row
    return records, missing
