"""``python -m purilib purify``: purify your own suspect model from the command line.

    python -m purilib purify suspect.safetensors --method NFT --clean-per-class 50 --out purified.safetensors
    python -m purilib purify suspect.pt --model resnet18 --normalization none --clean my_clean/ --test my_test/ \\
        --attack BadNets --out purified.safetensors

The checkpoint is untrusted input: it is read by ``checkpoints.load_weights`` (safetensors, or a plain
state dict with ``weights_only=True``), which refuses pickled code.  Clean data: ``--clean DIR`` (``DIR/<class>/*.png|jpg``, classes sorted by name) or
``--clean-per-class K`` (K images per class from CIFAR-10's held-out reserve under the data root).
Before and after purification it prints ACC on the test set (``--test DIR``, else CIFAR-10's test split) and,
given the attack (``--attack NAME [--attack-kwargs JSON]``, or a purilib model's ``manifest.json`` beside the
checkpoint), ASR and RA.  The purified weights go to ``--out`` (safetensors) with a JSON record beside them
(``<out>.json``: method, settings, clean data checksum, metrics, versions, device).
"""
import argparse
import json
import time
from pathlib import Path

NORMALIZATIONS = ("cifar10", "none")


def _parser():
    p = argparse.ArgumentParser(prog="python -m purilib purify", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the suspect model's weights (.safetensors, or a plain state dict .pt)")
    p.add_argument("--method", default="NFT", help="a registered defense (default NFT)")
    p.add_argument("--out", required=True, help="where the purified weights go (.safetensors)")
    clean = p.add_mutually_exclusive_group(required=True)
    clean.add_argument("--clean", help="a folder of clean images, <class>/<image>")
    clean.add_argument("--clean-per-class", type=int, help="K clean images per class from CIFAR-10's reserve")
    p.add_argument("--test", help="a folder of test images, <class>/<image> (default: CIFAR-10's test split)")
    p.add_argument("--model", default=None, help="the network (default: the manifest's, else preact_resnet18)")
    p.add_argument("--width", type=float, default=None, help="its width multiplier (default: the manifest's, else 1)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--normalization", default="cifar10",
                   help="what the checkpoint's inputs were normalised with when it carries no normalize layer: "
                        "cifar10 (purilib's models carry theirs), none, or MEAN,MEAN,MEAN,STD,STD,STD")
    p.add_argument("--attack", default=None, help="the suspected attack, to measure ASR (e.g. BadNets)")
    p.add_argument("--attack-kwargs", default="{}", help="its settings, JSON (e.g. '{\"size\": 8}')")
    p.add_argument("--manifest", default=None, help="a purilib model's manifest.json (default: one beside the "
                                                     "checkpoint): network, width and attack from it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the method's defaults (JSON values: --set steps=500 --set lr=0.02)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def _overrides(pairs):
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set needs KEY=VALUE, not {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a plain word: a string setting ("blocks")
    return out


def _normalization(text):
    if text == "none":
        return "none"
    if text == "cifar10":
        from .models.preact_resnet import CIFAR10_MEAN, CIFAR10_STD
        return CIFAR10_MEAN, CIFAR10_STD
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise ValueError(f"--normalization must be cifar10, none or six numbers MEAN x3,STD x3, not {text!r}")
    return tuple(values[:3]), tuple(values[3:])


def _folder(path, size):
    from .data import load_image_folder
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder '{folder}' (expected {folder}/<class>/<image>)")
    return load_image_folder(folder.name, root=folder.parent, size=size)


def purify_command(argv=None, out=print) -> dict:
    """Parse, load, purify, measure, save; return the record written beside the purified weights."""
    args = _parser().parse_args(argv)
    from .attacks import create_attack
    from .checkpoints import load_model, save_weights
    from .data import clean_subset, defense_split, load_cifar10
    from .defenses import create_defense
    from .devices import device_name, resolve_device
    from .metrics import evaluate
    from .models import create_model
    from .provenance import code_version

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at '{checkpoint}'")
    manifest_path = Path(args.manifest) if args.manifest else checkpoint.with_name("manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    config = manifest["config"] if manifest else {}
    name = args.model or config.get("model", "preact_resnet18")
    width = args.width or config.get("width", 1.0)
    device = resolve_device(args.device)
    overrides = _overrides(args.set)
    defense = create_defense(args.method, device=device, seed=args.seed, progress=not args.no_progress, **overrides)

    # the data: clean images (a folder, or the reserve of the model's data set) and a test set, at the model's
    # image size.  A purilib model's manifest names its data set, its reserve and its attack (learned state too)
    probe = create_model(name, num_classes=args.num_classes or 10, width=width)
    size = probe.input_size[0]
    attack = train = None
    if manifest is not None and (args.clean_per_class or not args.test):
        from .training import load_training_data
        data = load_training_data(config, args.data_root, None, device)
        train, test, attack, reserved = data.train, data.test, data.attack, data.reserved
    elif args.clean_per_class:
        train = load_cifar10("train", args.data_root)
        _, reserved = defense_split(train)
    if args.clean:
        clean = _folder(args.clean, size)
    else:
        clean = clean_subset(train, reserved, args.clean_per_class, seed=args.seed)
    if args.test:
        test = _folder(args.test, size)
    elif manifest is None:
        test = load_cifar10("test", args.data_root)
    classes = args.num_classes or clean.num_classes
    model = load_model(create_model(name, num_classes=classes, width=width), checkpoint,
                       normalization=_normalization(args.normalization)).to(device)
    if args.attack:  # named here: it replaces the manifest's
        attack = create_attack(args.attack, seed=args.seed, image_size=size, num_classes=classes,
                               **json.loads(args.attack_kwargs))
    elif attack is None and config.get("attack") not in (None, "Benign"):  # the manifest's, with its own data
        attack = create_attack(config["attack"], seed=config.get("seed", 0), image_size=size, num_classes=classes,
                               **config.get("attack_kwargs", {}))
    learned = checkpoint.with_name("attack.safetensors")  # what a purilib attack learned, beside its model
    if attack is not None and not args.attack and learned.exists():
        from .checkpoints import load_weights
        attack.load_state_dict(load_weights(learned))

    before = evaluate(model, test, attack, device=device)
    out("before: " + ", ".join(f"{k.upper()} {v:.1f}" for k, v in before.items()) + f"  ({len(test)} test images)")
    start = time.time()
    purified = defense.purify(model, clean)
    seconds = time.time() - start
    after = evaluate(purified, test, attack, device=device)
    out(f"after {defense.name}: " + ", ".join(f"{k.upper()} {v:.1f}" for k, v in after.items())
        + f"  ({seconds:.1f} s on {device_name(device)}, {len(clean)} clean images)")
    target = Path(args.out)
    save_weights(purified, target)
    record = {"checkpoint": str(checkpoint), "purified": str(target), "method": defense.name,
              "defense_config": defense.config, "model": name, "width": width, "num_classes": classes,
              "clean": args.clean or f"CIFAR-10 reserve, {args.clean_per_class} per class", "clean_images": len(clean),
              "clean_checksum": clean.checksum(), "attack": attack.config() if attack is not None else None,
              "before": before, "after": after, "seconds": round(seconds, 2), "seed": args.seed,
              "defense_stats": {k: v for k, v in defense.stats.items() if k != "seconds"},
              "code_version": code_version(), "device": device, "device_name": device_name(device),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    target.with_name(target.name + ".json").write_text(json.dumps(record, indent=1, default=float))
    out(f"written: {target} (and {target.name}.json)")
    return record
