"""FIP (Karim et al., "Fisher Information guided Purification against Backdoor Attacks", CCS 2024),
Figure 1: a backdoored model sits in a sharper region of the loss than a benign one.

- (a, b) the Hessian's eigen-spectral density of a benign and a backdoored (TrojanNet) model, with
  lambda_max, trace, ACC and ASR in each panel: ``spectrum`` (stochastic Lanczos quadrature,
  :func:`purilib.hessian.spectral_density`); its nodes and weights go in the record, the density is
  drawn from them;
- (c) lambda_max and ACC / ASR over the training epochs (Benign, BadNets, TrojanNet, CLB, SIG):
  ``history`` measures the snapshots the training kept (``train_backdoored_model(snapshot_every=k)``).

Both are of the mean cross-entropy over the defenses' clean set (the paper does not say which data),
the model in eval mode, every parameter; ACC / ASR of the history on a fixed class-balanced test subset.
"""
import torch

from .checkpoints import load_weights
from .hessian import broadened_density, spectral_density
from .layers import frozen
from .training import snapshot_paths
from .trajectory import measure, test_subset

def spectrum(model, clean, runs=1, steps=80, seed=0, data_name="the defenses' clean set") -> dict:
    """The record's spectrum: SLQ nodes and weights per run, lambda_max and the trace they give, of the loss
    over ``clean`` (``data_name`` says what those images are)."""
    with frozen(model, trainable=list(model.parameters())):
        result = spectral_density(model, clean, runs=runs, steps=steps, seed=seed, grid=2)
    return {"spectrum": {"nodes": [a.tolist() for a in result.nodes], "weights": [w.tolist() for w in result.weights],
                         "runs": runs, "steps": steps, "n_params": result.n_params},
            "lambda_max": result.lambda_max, "trace": result.trace, "trace_se": result.trace_se,
            "hessian_images": len(clean), "hessian_data": data_name}


def history(model, manifest, clean, test, attack, every=1, test_images=1000, iterations=10, device="cpu",
            bf16=False, cache_dir=None) -> list:
    """ACC / ASR / RA on a test subset and lambda_max for each snapshot the model's training kept."""
    paths = snapshot_paths(manifest, cache_dir)
    if not paths:
        raise ValueError(f"model {manifest['key']} kept no snapshots: train it with snapshot_every")
    subset = test_subset(test, test_images)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}  # the final weights, put back after
    points = []
    try:
        for epoch, path in paths.items():
            model.load_state_dict(load_weights(path))
            points.append({"epoch": epoch, **measure(model, clean, subset, attack, iterations, device, bf16)})
    finally:
        model.load_state_dict(snapshot)
    return points


def _first_seed(records):
    return records[records["seed"] == records["seed"].min()].drop_duplicates("attack", keep="last")


def markdown(records) -> str:
    """Per attack: lambda_max and trace (SLQ) with ACC / ASR, ours beside the paper's panels."""
    from .tables import get_table, published
    paper = {attack: cell for (attack, _), cell in published(get_table("fip-figure1")).items()}
    lines = ["| Attack | λmax ours | λmax paper | trace ours (± s.e.) | trace paper | ACC ours | ACC paper | "
             "ASR ours | ASR paper |", "|---|---|---|---|---|---|---|---|---|"]

    def num(value, digits=2):
        return "–" if value is None or value != value else f"{value:.{digits}f}"
    for r in _first_seed(records).itertuples():
        p = paper.get(r.attack, {})
        se = f" ± {r.trace_se:.1f}" if r.trace_se == r.trace_se else ""
        lines.append(f"| {r.attack} | {num(r.lambda_max)} | {num(p.get('lambda_max'))} | {num(r.trace, 1)}{se} | "
                     f"{num(p.get('trace_hessian'), 1)} | {num(r.acc, 1)} | {num(p.get('acc'), 1)} | {num(r.asr, 1)} | "
                     f"{num(p.get('asr'), 1)} |")
    return "\n".join(lines) + "\n"


def history_table(records):
    """One row per (attack, epoch) of the records' training histories (first seed)."""
    import pandas as pd
    return pd.DataFrame([{"attack": r["attack"], "seed": r["seed"], **point}
                         for r in _first_seed(records).to_dict("records") for point in r["history"]])


def plot(records, title):
    """Top: each model's spectral density (log scale), its numbers in the panel.  Bottom: lambda_max,
    then ACC and ASR, over the training epochs."""
    import matplotlib.pyplot as plt
    rows = _first_seed(records)
    n = len(rows)
    fig = plt.figure(figsize=(max(3.0 * n, 9.0), 6.4))
    grid = fig.add_gridspec(2, max(n, 3))
    for i, r in enumerate(rows.itertuples()):
        ax = fig.add_subplot(grid[0, i])
        nodes = [torch.tensor(a, dtype=torch.float64) for a in r.spectrum["nodes"]]
        weights = [torch.tensor(w, dtype=torch.float64) for w in r.spectrum["weights"]]
        # broadened over 1/100 of the range: a few dozen Lanczos nodes drawn as a readable curve
        span = max(float(torch.cat(nodes).max() - torch.cat(nodes).min()), 1e-6)
        xs, density, _, _ = broadened_density(nodes, weights, grid=2000, sigma=span / 100)
        ax.semilogy(xs.numpy(), density.clamp_min(1e-12).numpy(), color="tab:purple")
        ax.set(title=r.attack, xlabel="eigenvalue", ylim=(1e-6 * float(density.max()), 2 * float(density.max())))
        asr = "" if r.asr != r.asr else f"\nASR {r.asr:.1f}"
        ax.text(0.97, 0.95, f"λmax {r.lambda_max:.1f}\ntrace {r.trace:.0f}\nACC {r.acc:.1f}{asr}",
                transform=ax.transAxes, ha="right", va="top", fontsize=7)
    points = history_table(records)
    sharp, accuracy = fig.add_subplot(grid[1, :max(n, 3) // 2]), fig.add_subplot(grid[1, max(n, 3) // 2:])
    for attack, curve in points.groupby("attack", sort=False):
        line, = sharp.plot(curve["epoch"], curve["lambda_max"], "o-", ms=3, label=attack)
        accuracy.plot(curve["epoch"], curve["acc"], "-", color=line.get_color(), label=f"{attack} ACC")
        if curve["asr"].notna().any():
            accuracy.plot(curve["epoch"], curve["asr"], "--", color=line.get_color(), label=f"{attack} ASR")
    sharp.set(xlabel="epoch", ylabel="λmax", yscale="log", title="λmax while training")
    accuracy.set(xlabel="epoch", ylabel="%", ylim=(0, 100), title="ACC (solid) and ASR (dashed)")
    sharp.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)  # shown where the notebook asks for it (a small copy), not twice
    return fig
