"""Training (backdoored or benign) classifiers, cached by configuration.

``train_backdoored_model(**config)`` trains a model on the training split minus
the defenses' reserved clean pool, with the attack's poisoned images mixed in
(triggers applied to uint8 images before augmentation, as the attacks specify).
The result is cached under ``<cache>/models/<key>/``, ``key`` hashing the full
configuration and the data checksum: ``model.safetensors`` plus
``manifest.json`` (configuration, seed, code version, data checksum, ACC / ASR /
RA, seconds).  A second call with the same configuration trains nothing.  An
interrupted run resumes from its last finished epoch.

Attacks with networks of their own are handled here too: what an attack
prepares before poisoning (an optimised trigger, an encoder) is cached under
``<cache>/attacks/<key>/`` (keyed by the attack's configuration, the training
recipe and the data), and what it learns while the model trains (a generator)
is saved beside the model as ``attack.safetensors``.

Recipe: SGD with momentum and weight decay, batched random crop + flip,
cross-entropy; the schedule is ``cosine`` (linear warm-up, cosine to zero) or
``step`` (x0.1 at ``milestones``, the seed papers' 100/150 of 250 epochs).
"""
import contextlib
import functools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

try:
    import fcntl
except ImportError:  # not POSIX: no cache lock (one process at a time there)
    fcntl = None

from . import settings
from .attacks import AttackContext, create_attack
from .augment import random_crop_flip
from .checkpoints import load_weights, save_weights, weights_digest
from .data import ImageSet, create_dataset, defense_split
from .devices import device_name, fork_rng, generator, resolve_device
from .metrics import evaluate
from .models import create_model
from .progress import progress
from .provenance import code_version, config_key, seed_everything

TRAINING_FORMAT = 5  # bump when a change alters what a given config trains (5: PreAct-ResNet-18 without the final BN)

DEFAULT_TRAINING = dict(
    dataset="cifar10", model="preact_resnet18", width=1.0, attack="Benign", attack_kwargs={},
    epochs=250, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="step", milestones=(100, 150), warmup_epochs=0, bf16=False, reserve_fraction=0.05,
    dataset_kwargs={}, seed=0,
)


def learning_rate(config, step, steps_per_epoch):
    epoch = step / steps_per_epoch
    if config["schedule"] == "step":
        return config["lr"] * 0.1 ** sum(epoch >= m for m in config["milestones"])
    warmup = config["warmup_epochs"]
    if epoch < warmup:
        return config["lr"] * epoch / warmup
    fraction = (epoch - warmup) / max(1e-8, config["epochs"] - warmup)
    return config["lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


class TrainingData(NamedTuple):
    """What a model's training configuration gives: the data and the attack (a tuple too, in this order)."""
    train: ImageSet            # the full training split, clean
    attack_train: ImageSet     # what the model trains on: the split minus the reserve, poisoned
    test: ImageSet             # the clean test split
    attack: object             # the attack (None for Benign), its learned state not yet restored
    poison_idx: torch.Tensor   # indices (of ``train``) of the poisoned images
    reserved: torch.Tensor     # indices (of ``train``) of the defenses' held-out reserve


def load_training_data(config, data_root=None, cache_dir=None, device="cpu") -> TrainingData:
    """The data and the attack of a training configuration (:class:`TrainingData`).  The last result is
    kept, so the table runner's second call for the model it just trained costs nothing."""
    settings_only = {k: config[k] for k in DEFAULT_TRAINING}
    return _load_training_data(json.dumps(settings_only, sort_keys=True), data_root, cache_dir,
                               resolve_device(device))


@functools.lru_cache(maxsize=1)
def _load_training_data(config_json, data_root, cache_dir, device):
    config = json.loads(config_json)
    data_kwargs = dict(config["dataset_kwargs"])
    if config["dataset"] == "cifar10":
        data_kwargs.update(data_root=data_root, cache_dir=cache_dir)
    elif config["dataset"] == "image_folder":
        data_kwargs.update(data_root=data_root, cache_dir=cache_dir)
    data_json = json.dumps(data_kwargs, sort_keys=True, default=str)
    train, test = (_dataset(config["dataset"], split, data_json) for split in ("train", "test"))
    attack_idx, reserved = defense_split(train, config["reserve_fraction"], seed=0)
    height, width = train.images.shape[-2:]
    if height != width:
        raise ValueError(f"the attacks take square images; {config['dataset']} has {height}x{width}")
    if train.num_classes != test.num_classes:
        raise ValueError(f"the training and test splits have {train.num_classes} and {test.num_classes} classes")
    attack = create_attack(config["attack"], seed=config["seed"], image_size=width, num_classes=train.num_classes,
                           **config["attack_kwargs"])
    train_part = train.subset(attack_idx)
    poison_idx = torch.empty(0, dtype=torch.long, device="cpu")
    if attack is not None:
        attack.context = AttackContext(device=device, bf16=config["bf16"], clean_model=functools.partial(
            _clean_model, config, data_root, cache_dir, device))
        if attack.needs_preparation:
            _prepare_attack(attack, config, train_part, cache_dir)
        train_part, poison_idx = attack.poison_train_set(train_part)
        poison_idx = attack_idx[poison_idx]  # as indices of the full training set
    return TrainingData(train, train_part, test, attack, poison_idx, reserved)


@functools.lru_cache(maxsize=2)
def _dataset(name, split, data_json):
    """The decoded split, kept for the next row of a table: an image folder (ImageNet) is decoded once
    per run, not once per model."""
    return create_dataset(name, split, **json.loads(data_json))


def _clean_model(config, data_root, cache_dir, device):
    """The benign model trained with the same recipe: what TrojanNN or CLB optimise against."""
    clean_config = {**config, "attack": "Benign", "attack_kwargs": {}}
    return train_backdoored_model(device=device, data_root=data_root, cache_dir=cache_dir, **clean_config)[0]


@contextlib.contextmanager
def one_writer(folder: Path):
    """Hold ``folder``'s lock: of several processes filling one cache entry (parallel workers), one
    trains and the others wait, then load what it wrote.  POSIX file locks; elsewhere no lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_attack(attack, config, train_part, cache_dir):
    """Run ``attack.prepare`` once per (attack, training recipe, data); cache what it learns."""
    recipe = {k: v for k, v in config.items() if k not in ("attack", "attack_kwargs")}
    key = config_key({"attack": attack.config(), "recipe": recipe, "data": train_part.checksum(),
                      "format": TRAINING_FORMAT})
    folder = settings.cache_dir(cache_dir) / "attacks" / key
    with one_writer(folder):
        _prepare_attack_once(attack, config, train_part, folder, recipe)


def _prepare_attack_once(attack, config, train_part, folder, recipe):
    if (folder / "state.safetensors").exists():
        attack.load_state_dict(load_weights(folder / "state.safetensors"))
        return
    start = time.time()
    with fork_rng():
        seed_everything(config["seed"])
        attack.prepare(train_part, attack.context)
    save_weights(attack.state_dict(), folder / "state.safetensors")
    (folder / "manifest.json").write_text(json.dumps(
        {"attack_config": attack.config(), "recipe": recipe, "seconds": round(time.time() - start, 1),
         "code_version": code_version()}, indent=1))


def restore_attack(attack, manifest, cache_dir=None):
    """Load what ``attack`` learned while its model trained (no-op for data-poisoning attacks)."""
    path = settings.cache_dir(cache_dir) / "models" / manifest["key"] / "attack.safetensors"
    if attack is not None and path.exists():
        attack.load_state_dict(load_weights(path))
    return attack


def _optimizer(model, config, device, fast):
    """SGD with momentum and weight decay on every parameter (BN included, as in the seed papers'
    training scripts); one fused kernel per step on a GPU."""
    extra = {"fused": True} if fast and torch.device(device).type == "cuda" else {}
    return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                           nesterov=config["nesterov"], weight_decay=config["weight_decay"], **extra)


def _compiled(model, device, compile):
    """``torch.compile(model, mode="reduce-overhead")`` (CUDA graphs) on a GPU when ``compile`` is
    True or "auto"; the model itself elsewhere, or where compilation is unavailable."""
    wanted = compile is True or (compile == "auto" and torch.device(device).type == "cuda")
    if not wanted:
        return model
    try:
        return torch.compile(model, mode="reduce-overhead")
    except Exception as error:  # noqa: BLE001 (an old torch, no compiler): the plain path
        print(f"torch.compile unavailable ({type(error).__name__}: {error}); training uncompiled")
        return model


def fit(model, train, config, device, checkpoint=None, attack=None, desc="train", fast=True, compile="auto",
        checkpoint_seconds=30.0, after_epoch=None):
    """The training loop; returns its wall seconds, those of an interrupted run it resumed included.

    The data set sits on the device; each epoch's order and augmentation are drawn there from a
    generator seeded by (seed, epoch), so a resumed run draws what an uninterrupted one would.
    The loss stays on the device and is read once per epoch.  ``compile`` ("auto": on CUDA) runs
    the network through ``torch.compile``; if that fails at the first step, training goes on
    uncompiled.  ``checkpoint``: path of a resumable state, written after the first epoch and
    then at most every ``checkpoint_seconds``.  ``fast=False`` is the reference loop that
    ``benchmarks/gpu_speed.py`` compares against: a host sync per step, random numbers drawn on
    the CPU, no fused optimizer, no compilation (the same recipe).  ``after_epoch(epochs_done, model)``
    is called after every epoch (FIP Figure 1's snapshots)."""
    optimizer = _optimizer(model, config, device, fast)
    start_epoch, seconds_before = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        seconds_before = float(state.get("seconds", 0.0))
        if attack is not None and state.get("attack"):
            attack.load_state_dict(state["attack"])
    images, labels = train.images.to(device), train.labels.to(device)
    batch_size = config["batch_size"]
    steps_per_epoch = len(labels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(labels)} training images are fewer than one batch of {batch_size}")
    model.to(device).train()
    network = _compiled(model, device, compile) if fast else model
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=config["bf16"])

    def backward(net, x, y):
        with autocast:
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss
    start = last_save = time.time()
    bar = progress(range(start_epoch, config["epochs"]), desc=desc, initial=start_epoch, total=config["epochs"])
    for epoch in bar:
        g = generator(config["seed"] * 100_003 + epoch, device if fast else "cpu")  # resumable: no hidden state
        order = torch.randperm(len(labels), generator=g, device=g.device).to(device)
        total_loss = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, epoch * steps_per_epoch + i, steps_per_epoch)
            batch = order[i * batch_size:(i + 1) * batch_size]
            x, y = images[batch], labels[batch]
            if attack is not None and attack.controls_training:
                x, y = attack.training_batch(x, y, model, epoch=epoch, epochs=config["epochs"])
            x = random_crop_flip(x.float().div_(255), generator=g)
            x = x.contiguous(memory_format=torch.channels_last)
            try:
                loss = backward(network, x, y)
            except Exception as error:  # noqa: BLE001  compilation fails at the first call, if at all
                if network is model or epoch != start_epoch or i != 0:
                    raise
                print(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); training uncompiled")
                network = model
                loss = backward(network, x, y)
            optimizer.step()
            total_loss += loss.detach().float() if fast else loss.item()
        bar.set_postfix(loss=f"{total_loss.item() / steps_per_epoch:.3f}")
        if after_epoch is not None:
            after_epoch(epoch + 1, model)
        done = epoch + 1 == config["epochs"]
        if checkpoint is not None and not done and (epoch == start_epoch or time.time() - last_save >= checkpoint_seconds):
            attack_state = attack.state_dict() if attack is not None and attack.controls_training else {}
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "attack": attack_state, "seconds": seconds_before + time.time() - start},
                       checkpoint.with_name("partial.tmp"))
            checkpoint.with_name("partial.tmp").replace(checkpoint)
            last_save = time.time()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)  # the seconds count the work, not its queueing
    return seconds_before + time.time() - start


def training_config(**overrides) -> dict:
    """The training settings ``overrides`` make (keys of ``DEFAULT_TRAINING``; an unknown key is an error): what
    a model's cache entry records as its ``config``, short of the attack's and the data's."""
    unknown = set(overrides) - set(DEFAULT_TRAINING)
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(DEFAULT_TRAINING)}")
    config = {**DEFAULT_TRAINING, **overrides}
    config["milestones"] = list(config["milestones"])
    return config


def train_backdoored_model(device="auto", data_root=None, cache_dir=None, retrain=False, compile="auto",
                           snapshot_every=None, **overrides):
    """Train (or load from cache) a model; return ``(model, manifest)``.

    ``overrides`` are keys of ``DEFAULT_TRAINING``; an unknown key is an error.  ``compile``: see
    :func:`fit` (how the loop runs, not what it trains: not part of the cache key).  ``snapshot_every=k``:
    the weights at epoch 0 and after every k-th epoch are kept too (``snapshots/epochNNNN.safetensors``
    in the model's cache folder; ``snapshot_paths``); a cached model without them is trained again.
    """
    config = training_config(**overrides)
    device = resolve_device(device)
    data = load_training_data(config, data_root, cache_dir, device)
    key_config = {**config, "attack_config": data.attack.config() if data.attack is not None else None,
                  "data_checksum": data.train.checksum() + data.test.checksum(), "format": TRAINING_FORMAT}
    key = config_key(key_config)
    folder = settings.cache_dir(cache_dir) / "models" / key
    with one_writer(folder):  # one trainer per model; a second process waits, then loads it
        return _train_or_load(config, key, key_config, folder, device, data, retrain=retrain, compile=compile,
                              cache_dir=cache_dir, snapshot_every=snapshot_every)


def _train_or_load(config, key, key_config, folder, device, data: TrainingData, retrain=False, compile="auto",
                   cache_dir=None, snapshot_every=None):
    train, train_part, test, attack, poison_idx, reserved = data
    seed_everything(config["seed"])  # before the model exists: its initial weights follow the seed
    model = create_model(config["model"], num_classes=train.num_classes, width=config["width"],
                         input_size=tuple(train.images.shape[-2:]))
    model = model.to(memory_format=torch.channels_last)
    if snapshot_every and not retrain and (folder / "manifest.json").exists():
        retrain = json.loads((folder / "manifest.json").read_text()).get("snapshot_every") != snapshot_every
    if (folder / "manifest.json").exists() and not retrain:
        model.load_state_dict(load_weights(folder / "model.safetensors"))
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.setdefault("weights_digest", weights_digest(model))  # manifests written before it existed
        restore_attack(attack, manifest, cache_dir)
        return model.to(device), manifest
    after_epoch = None
    if snapshot_every:  # FIP Figure 1: the model as it learns
        snapshots = folder / "snapshots"
        snapshots.mkdir(parents=True, exist_ok=True)

        def after_epoch(epoch, net):
            if epoch % snapshot_every == 0 or epoch == config["epochs"]:
                save_weights(net, snapshots / f"epoch{epoch:04d}.safetensors")
        if not (folder / "partial.pt").exists():  # a fresh start: no snapshot of an earlier training stays
            for old in snapshots.glob("epoch*.safetensors"):
                old.unlink()
            after_epoch(0, model)
    seconds = fit(model, train_part, config, device, checkpoint=folder / "partial.pt", attack=attack,
                  desc=f"train {config['attack']} {config['model']}x{config['width']}", compile=compile,
                  after_epoch=after_epoch)
    metrics = evaluate(model, test, attack, device=device, bf16=config["bf16"])
    manifest = {"key": key, "config": key_config, "code_version": code_version(), "device": device,
                "device_name": device_name(device), "torch": torch.__version__,
                "train_seconds": round(seconds, 1), "num_train": len(train_part), "weights_digest": weights_digest(model),
                "poison_indices": poison_idx.tolist(), "reserved_indices": reserved.tolist(),
                **({"snapshot_every": snapshot_every} if snapshot_every else {}),
                **{k: round(v, 2) for k, v in metrics.items()}}
    save_weights(model, folder / "model.safetensors")
    if attack is not None and attack.state_dict():
        save_weights(attack.state_dict(), folder / "attack.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (folder / "partial.pt").unlink(missing_ok=True)
    return model, manifest


def snapshot_paths(manifest, cache_dir=None) -> dict:
    """{epoch: path} of the weights kept while the manifest's model trained (``snapshot_every``)."""
    folder = settings.cache_dir(cache_dir) / "models" / manifest["key"] / "snapshots"
    return {int(p.stem[len("epoch"):]): p for p in sorted(folder.glob("epoch*.safetensors"))}
