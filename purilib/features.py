"""Where poisoned images sit in a network's feature space, before and after purification.

- FIP (CCS 2024), Figure 5: "t-SNE visualization of the features of a BadNets-backdoored
  PreAct-ResNet-18 before and after FIP purification".
- NFT, Figure 1: t-SNE of a backdoored model's features, in which the poisoned images form a
  cluster of their own, before purification and after one-shot NFT without and with the mask
  regulariser.

What is measured: the penultimate features, i.e. the input of the final linear classifier, of a
fixed sample of test images: a class-balanced clean subset (one group per class) and images of
the attack's eligible classes (the non-target classes, all-to-one) with the trigger applied (one
extra group, "poisoned").  A backdoored network maps every triggered image to one tight region
that the classifier sends to the target class; purification should scatter those images back
among their true classes.  The figure shows this through t-SNE (``tsne`` / ``plot_tsne``); because
t-SNE's distances and cluster sizes mean little, ``poison_separation`` reads the same claim as a
number, in feature space: the share of poisoned images whose nearest neighbours are mostly
poisoned, high before purification, low after.

Typical use::

    sample = feature_sample(test, attack, per_class=100, poisoned=500, seed=0)
    panels, scores = feature_panels({"before": backdoored, "after FIP": purified}, sample)
    fig = plot_tsne(panels, "BadNets, PreAct-ResNet-18", scores)
"""
import re
from dataclasses import dataclass

import numpy as np
import torch

from .data import ImageSet, class_balanced_split
from .devices import generator
from .layers import classifier_of

POISONED = "poisoned"  # the group label of the triggered images


# ---------------------------------------------------------------- features
@torch.no_grad()
def penultimate_features(model, images: torch.Tensor, batch_size=256) -> torch.Tensor:
    """float32 ``[N, D]`` on the CPU: what the final ``nn.Linear`` (``layers.classifier_of``) receives
    for each uint8 image of ``images`` ``[N, 3, H, W]``, with the model in eval mode.

    A forward pre-hook on the classifier reads its input, so no model needs a ``features`` method:
    it works for every network in :mod:`purilib.models`.  Images go to the model's device a batch at
    a time and are scaled to [0, 1] as :func:`purilib.metrics.predict` feeds them; the model's
    train / eval mode is restored after."""
    classifier = classifier_of(model)
    if len(images) == 0:
        return torch.empty(0, classifier.in_features, dtype=torch.float32, device="cpu")
    device = classifier.weight.device  # the model's device
    captured = []
    # the pre-hook sees the classifier's positional inputs; the features are the first
    hook = classifier.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()  # BatchNorm's running statistics: an image's features do not depend on its batch
    batches = images.split(batch_size)
    try:
        for batch in batches:
            model(batch.to(device).float().div_(255))
    finally:
        hook.remove()
        model.train(was_training)
    if len(captured) != len(batches):  # a model that calls its classifier twice per forward has no single answer
        raise RuntimeError(f"the classifier ran {len(captured)} times for {len(batches)} batches")
    return torch.cat(captured).flatten(1)


# ---------------------------------------------------------------- the sample
@dataclass
class FeatureSample:
    """The images a t-SNE figure shows: clean ones first, then the poisoned ones."""
    images: torch.Tensor  # uint8 [N, 3, H, W], on the CPU like every ImageSet
    labels: torch.Tensor  # int64 [N]: the true class (for the poisoned images, the class before the trigger)
    poisoned: torch.Tensor  # bool [N]
    groups: np.ndarray  # str [N]: "class k" for clean images, "poisoned" for triggered ones

    def __len__(self):
        return len(self.labels)


def feature_sample(test: ImageSet, attack, per_class=100, poisoned=500, seed=0) -> FeatureSample:
    """``per_class`` clean test images of every class (``data.class_balanced_split``, by ``seed``), and
    ``poisoned`` other test images from the attack's eligible classes (non-target, all-to-one; any,
    all-to-all), chosen by ``seed``, with the attack's trigger applied.

    The poisoned images are drawn from the test images outside the clean subset, so that every
    point of the figure is a different image (a triggered copy next to its own clean twin would
    make mixing look better than it is)."""
    clean, rest = class_balanced_split(test.labels, per_class, seed)
    eligible = rest[torch.isin(rest, attack.eligible(test.labels))]
    if len(eligible) < poisoned:
        raise ValueError(f"{poisoned} poisoned images asked for, but only {len(eligible)} eligible test images "
                         "are left outside the clean subset")
    g = generator(seed)
    chosen = eligible[torch.randperm(len(eligible), generator=g, device=g.device)[:poisoned]].sort().values
    images = torch.cat([test.images[clean], attack.apply_trigger(test.images[chosen])])
    labels = torch.cat([test.labels[clean], test.labels[chosen]])
    is_poisoned = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    is_poisoned[len(clean):] = True
    groups = np.array([f"class {k}" for k in test.labels[clean].tolist()] + [POISONED] * len(chosen))
    return FeatureSample(images, labels, is_poisoned, groups)


# ---------------------------------------------------------------- measures
def tsne(features, seed=0, perplexity=30.0) -> np.ndarray:
    """A 2-D t-SNE embedding ``[N, 2]`` of ``features`` ``[N, D]`` (scikit-learn's ``TSNE``: PCA
    initialisation, ``random_state=seed``, so a seed gives the same picture on the same machine).
    Perplexity must be below N (t-SNE's effective number of neighbours)."""
    from sklearn.manifold import TSNE  # imported here: only the figures need scikit-learn
    x = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float32)
    if not perplexity < len(x):
        raise ValueError(f"perplexity {perplexity} must be below the number of points ({len(x)})")
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def poison_separation(features, groups, k=10) -> float:
    """How much the poisoned points form a cluster of their own, in [0, 1].

    Exactly: for each point of group "poisoned", take its ``k`` nearest other points (Euclidean
    distance in the space given, the point itself excluded); the point counts as separated when
    more than half of those ``k`` are poisoned too.  The result is the share of poisoned points that
    are separated.  Give it the penultimate features, not the t-SNE embedding: t-SNE distorts
    distances, and the papers' claim is about the features.

    1 means the poisoned images sit among themselves (the backdoor's cluster, before purification).
    If they were mixed in at random among the rest, each neighbour would be poisoned with
    probability q = (m - 1) / (N - 1) (m poisoned of N points) and the expected score is the
    binomial tail P[Bin(k, q) > k / 2] (:func:`separation_chance`): about 0 for a sample with few
    poisoned points, the level purification should bring it down to."""
    x = torch.as_tensor(np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features),
                        dtype=torch.float64)
    is_poisoned = torch.as_tensor(np.asarray(groups) == POISONED, device=x.device)
    rows = is_poisoned.nonzero().flatten()
    if len(rows) == 0:
        raise ValueError("no point of group 'poisoned'")
    if not 0 < k < len(x):
        raise ValueError(f"k must be in [1, {len(x) - 1}], not {k}")
    separated = 0
    for block in rows.split(1024):  # a block of rows at a time: the full distance matrix of 10,000 points is large
        distances = torch.cdist(x[block], x)
        distances[torch.arange(len(block), device=x.device), block] = float("inf")  # a point is not its own neighbour
        neighbours = distances.topk(k, largest=False).indices
        separated += int((is_poisoned[neighbours].double().mean(1) > 0.5).sum())
    return separated / len(rows)


def separation_chance(groups, k=10) -> float:
    """``poison_separation``'s expected value if the poisoned points were mixed in at random."""
    from math import comb
    groups = np.asarray(groups)
    m, n = int((groups == POISONED).sum()), len(groups)
    q = (m - 1) / (n - 1)
    return sum(comb(k, j) * q ** j * (1 - q) ** (k - j) for j in range(k // 2 + 1, k + 1))


def feature_panels(models: dict, sample: FeatureSample, seed=0, perplexity=30.0, k=10, batch_size=256):
    """For each named model ("before", "after FIP", ...): its t-SNE panel (embedding, groups) and its
    ``poison_separation``, on the same sample and seed."""
    panels, scores = {}, {}
    for name, model in models.items():
        features = penultimate_features(model, sample.images, batch_size)
        panels[name] = (tsne(features, seed, perplexity), sample.groups)
        scores[name] = poison_separation(features, sample.groups, k)
    return panels, scores


# ---------------------------------------------------------------- figure
def _natural(group: str):
    """'class 2' before 'class 10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", group)]


def plot_tsne(panels: dict, title: str, scores: dict = None):
    """One subplot per panel (``{name: (embedding [N, 2], groups [N])}``): clean points coloured by
    class, small and translucent; poisoned points as black crosses on top; one legend.  ``scores``
    (``{name: poison_separation}``) are written under each panel's name."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    for ax, (name, (embedding, groups)) in zip(axes[0], panels.items()):
        embedding, groups = np.asarray(embedding), np.asarray(groups)
        classes = sorted(set(groups.tolist()) - {POISONED}, key=_natural)
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, group in enumerate(classes):
            at = groups == group
            ax.scatter(embedding[at, 0], embedding[at, 1], s=4, alpha=0.5, color=colours(i % colours.N),
                       label=group, linewidths=0)
        at = groups == POISONED  # drawn last, so the backdoor's cluster is never hidden under clean points
        ax.scatter(embedding[at, 0], embedding[at, 1], s=10, marker="x", color="black", linewidths=0.6,
                   label=POISONED)
        ax.set_title(name if scores is None or name not in scores else f"{name}\nseparation {scores[name]:.2f}",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, markerscale=2, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.86, 1))  # room on the right for the legend
    plt.close(fig)  # shown where the notebook asks for it (a small copy), not twice
    return fig


# ---------------------------------------------------------------- a table's cells (fip-figure5, nft-figure1)
def measure(model, test: ImageSet, attack, per_class=100, poisoned=500, perplexity=30.0, k=10, seed=0) -> dict:
    """What a cell's record keeps: the t-SNE embedding of the model's features of a fixed sample (the same
    for every cell of a row: ``seed``), each point's group, and ``poison_separation`` in feature space."""
    sample = feature_sample(test, attack, per_class=per_class, poisoned=poisoned, seed=seed)
    features = penultimate_features(model, sample.images)
    return {"tsne": np.round(tsne(features, seed, perplexity), 3).tolist(), "tsne_groups": sample.groups.tolist(),
            "poison_separation": poison_separation(features, sample.groups, k),
            "separation_chance": separation_chance(sample.groups, k)}


def panels_from_records(records):
    """({column: (embedding, groups)}, {column: poison_separation}) of one row's cells (the first seed),
    in the records' column order."""
    rows = records[records["seed"] == records["seed"].min()]
    panels = {r["defense"]: (np.asarray(r["tsne"]), np.asarray(r["tsne_groups"])) for r in rows.to_dict("records")}
    scores = dict(zip(rows["defense"], rows["poison_separation"]))
    return panels, scores


def separation_markdown(records) -> str:
    lines = ["| Attack | Column | ASR | ACC | poison separation (chance) |", "|---|---|---|---|---|"]
    for r in records.itertuples():
        lines.append(f"| {r.attack} | {r.defense} | {r.asr:.1f} | {r.acc:.1f} | {r.poison_separation:.2f} "
                     f"({r.separation_chance:.2f}) |")
    return "\n".join(lines) + "\n"
