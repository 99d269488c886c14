"""What happens during purification (FIP, CCS 2024, Figure 3): ACC, ASR and the Hessian's lambda_max
every few steps of a defense, through the defenses' per-step callback.

``recorder`` returns a callback for ``Defense(callback=...)`` that appends a point every ``every``
steps: ACC / ASR / RA on a fixed test subset and lambda_max (power iteration, ``iterations`` steps)
of the loss over the defense's clean set, for the model as it is at that step (masks included, for
mask-based defenses).  The model's train / eval mode and its parameters' trainable flags are
restored after each point, so the defense goes on as if nothing was measured.
"""
from .data import class_balanced_split
from .devices import fork_rng
from .hessian import lambda_max
from .layers import frozen
from .metrics import evaluate


def test_subset(test, images: int):
    """A fixed, class-balanced subset of the test set (a data set stored class by class would otherwise
    give a first slice of the target class alone, and no ASR)."""
    per_class = max(1, images // test.num_classes)
    return test.subset(class_balanced_split(test.labels, per_class, 0)[0])


def measure(model, clean, test, attack, iterations=10, device="cpu", bf16=False) -> dict:
    """ACC / ASR / RA on ``test`` and lambda_max over ``clean`` of the model as it is now (every
    parameter; the trainable flags are restored, the model is left in eval mode)."""
    point = evaluate(model, test, attack, device=device, bf16=bf16)
    with frozen(model, trainable=list(model.parameters())):
        point["lambda_max"] = lambda_max(model, clean, iterations=iterations)
    return point


def recorder(points: list, clean, test, attack, every: int, iterations=10, device="cpu", bf16=False):
    def record(step, model):
        if (step + 1) % every:
            return
        training = model.training
        points.append({"step": step + 1, **measure(model, clean, test, attack, iterations, device, bf16)})
        model.train(training)  # the defense goes on in the mode it was in
    return record


def checkpoint_recorder(points: list, test, attack, every: int, device="cpu", bf16=False):
    """A callback that appends ACC / ASR / RA on ``test`` every ``every`` steps (a defense's checkpoints, as
    the NFT release evaluates every 200 steps), leaving the defense's random state and mode as they were."""
    def record(step, model):
        if (step + 1) % every:
            return
        training = model.training
        with fork_rng():  # an attack's test trigger may draw random numbers: the defense's stay its own
            points.append({"step": step + 1, **evaluate(model, test, attack, device=device, bf16=bf16)})
        model.train(training)
    return record


def start_point(model, clean, test, attack, iterations=10, device="cpu", bf16=False) -> dict:
    """Step 0: the model before purification."""
    return {"step": 0, **measure(model, clean, test, attack, iterations, device, bf16)}


def points_table(records):
    """One row per (attack, defense, seed, step) of the records' trajectories."""
    import pandas as pd
    rows = [{"attack": r["attack"], "defense": r["defense"], "seed": r["seed"], **point}
            for r in records.to_dict("records") if isinstance(r.get("trajectory"), list) for point in r["trajectory"]]
    return pd.DataFrame(rows)


def plot(points, title):
    """Per attack: ACC and ASR (left axis, %) and lambda_max (right axis, log scale) against the step."""
    import matplotlib.pyplot as plt
    attacks = list(dict.fromkeys(points["attack"]))
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 2.8), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        curve = points[(points["attack"] == attack) & (points["seed"] == points["seed"].min())]
        ax.plot(curve["step"], curve["acc"], "o-", label="ACC", color="tab:blue")
        ax.plot(curve["step"], curve["asr"], "s-", label="ASR", color="tab:red")
        ax.set(title=attack, xlabel="step", ylim=(0, 100))
        sharp = ax.twinx()
        sharp.plot(curve["step"], curve["lambda_max"], "^--", color="tab:gray", label="λmax")
        sharp.set_yscale("log")
        if ax is axes[0][-1]:
            sharp.set_ylabel("λmax")
    axes[0][0].set_ylabel("%")
    axes[0][0].legend(fontsize=7, loc="center left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # shown where the notebook asks for it (a small copy), not twice
    return fig


def markdown(points) -> str:
    lines = ["| Attack | Defense | step | ACC | ASR | λmax |", "|---|---|---|---|---|---|"]
    for r in points.itertuples():
        lines.append(f"| {r.attack} | {r.defense} | {r.step} | {r.acc:.1f} | {r.asr:.1f} | {r.lambda_max:.2f} |")
    return "\n".join(lines) + "\n"
