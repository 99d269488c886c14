"""The attack suite's own table and gallery.

``run_attack_table`` trains (or loads from cache) one backdoored model per
attack with a profile's recipe and reports its ACC / ASR / RA beside the benign
model's ACC and the paper's no-defense numbers; ``gallery`` shows, per attack, a
clean test image, its triggered version and the amplified difference.
"""
import json

import numpy as np
import pandas as pd
import torch

from .profiles import training_settings
from .devices import generator, resolve_device
from .tables import get_table, published
from .training import load_training_data, restore_attack, train_backdoored_model


def backdoored(attack_name, profile, seed=0, device="cpu", data_root=None, cache_dir=None):
    """(model, manifest, attack, test set) for one attack of a profile, trained or cached."""
    model, manifest = train_backdoored_model(attack=attack_name, seed=seed, device=device, data_root=data_root,
                                             cache_dir=cache_dir, **training_settings(profile, attack_name))
    data = load_training_data(manifest["config"], data_root, cache_dir, device)
    test, attack = data.test, data.attack
    return model, manifest, restore_attack(attack, manifest, cache_dir), test


def run_attack_table(prof, attacks=None, seed=0, device="auto", data_root=None, cache_dir=None):
    """One row per attack: the backdoored model's ACC / ASR / RA, its ACC drop against the benign
    model (same recipe), training seconds, and the paper's no-defense numbers (``prof``: a Profile)."""
    table = get_table("attacks")
    attacks = list(attacks or table.attacks)
    device = resolve_device(device)
    paper = published(table)
    rows, benign_acc = [], None
    for name in ["Benign"] + [a for a in attacks if a != "Benign"]:
        _, manifest, _, _ = backdoored(name, prof, seed, device, data_root, cache_dir)
        if name == "Benign":
            benign_acc = manifest["acc"]
            if "Benign" not in attacks:
                continue
        reference = paper.get((name, "No defense"), {})
        rows.append({"attack": name, "acc": manifest["acc"], "asr": manifest.get("asr", np.nan),
                     "ra": manifest.get("ra", np.nan), "acc_drop_vs_benign": round(benign_acc - manifest["acc"], 2),
                     "paper_acc": reference.get("acc", np.nan), "paper_asr": reference.get("asr", np.nan),
                     "train_seconds": manifest["train_seconds"], "profile": prof.name, "seed": seed,
                     "attack_config": json.dumps(manifest["config"]["attack_config"], sort_keys=True),
                     "model_key": manifest["key"], "code_version": manifest["code_version"]})
    return pd.DataFrame(rows)


def to_markdown(frame: pd.DataFrame, profile: str) -> str:
    lines = [f"# The attack suite (profile `{profile}`)", "",
             "Backdoored model per attack (10% poison unless the attack says otherwise, target 0); ACC drop is "
             "against the benign model trained with the same recipe. Paper: NFT Table 1, no defense. Percent.", "",
             "| Attack | ACC | ASR | RA | ACC drop vs benign | ACC paper | ASR paper | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        cells = [f"{v:.1f}" if not pd.isna(v) else "–" for v in (r.acc, r.asr, r.ra, r.acc_drop_vs_benign,
                                                                 r.paper_acc, r.paper_asr, r.train_seconds)]
        lines.append(f"| {r.attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mixed_subset(test, size=1000, seed=0):
    """A seeded random subset: a real test set is stored class by class, so its first images are all of
    class 0 (a composite attack such as CBA needs images of its source classes)."""
    order = torch.randperm(len(test), generator=generator(seed), device="cpu")
    return test.subset(order[:min(size, len(test))])


def gallery(attacks, prof, seed=0, device="auto", data_root=None, cache_dir=None, image_index=0, amplify=5.0):
    """Figure: per attack (a column), a clean test image, its triggered version and |difference| x amplify."""
    import matplotlib.pyplot as plt
    device = resolve_device(device)
    names = [a for a in attacks if a != "Benign"]
    fig, axes = plt.subplots(3, len(names), figsize=(1.6 * len(names), 5.2), squeeze=False)
    for column, name in enumerate(names):
        _, _, attack, test = backdoored(name, prof, seed, device, data_root, cache_dir)
        clean = test.images[attack.eligible(test.labels)[image_index]]
        try:
            triggered = attack.apply_trigger(clean[None])[0]
        except (NotImplementedError, ValueError):  # no per-image trigger (CBA composes two images)
            triggered = attack.triggered_test_set(mixed_subset(test))[0][image_index]
            clean = None
        difference = None if clean is None else \
            ((triggered.float() - clean.float()).abs() * amplify).clamp(0, 255).to(torch.uint8)
        for row, (picture, label) in enumerate(((clean, "clean"), (triggered, "triggered"),
                                                (difference, f"|diff| x{amplify:g}"))):
            ax = axes[row, column]
            if picture is None:
                ax.text(0.5, 0.5, "composite:\nno single\nclean image", ha="center", va="center", fontsize=7)
            else:
                ax.imshow(picture.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if column == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    return fig


def write(spec):
    """The attacks table of ``spec`` (a checked RunSpec of table "attacks"): table.csv, table.md and
    gallery.png in its output folder; returns a ``reports.Report``."""
    import matplotlib.pyplot as plt

    from .reports import Report
    from .reports.summary import percentages_valid
    out, prof = spec.output_dir, spec.profile
    out.mkdir(parents=True, exist_ok=True)
    where = dict(device=spec.device, data_root=spec.data_root, cache_dir=spec.cache_dir)
    table = run_attack_table(prof, attacks=spec.attacks, **where)
    table.to_csv(out / "table.csv", index=False)
    text = to_markdown(table, prof.name)
    (out / "table.md").write_text(text)
    figure = gallery(table["attack"], prof, **where)
    figure.savefig(out / "gallery.png", dpi=120)
    plt.close(figure)
    outline = (", ".join(table["attack"]) + f"\n{len(table)} models; ACC and ASR within [0, 100]: "
               f"{percentages_valid(table)}")
    return Report(table, figure, [text], outline, ["table.csv", "table.md", "gallery.png"], colors=256)
