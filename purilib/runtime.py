"""FIP (CCS 2024) Figure 4: average purification runtime per defense, from the records already made.

A record holds the wall seconds of its defense on its model, the hardware (``device_name``) and how
busy the host was (``load_average_1min``).  ``collect`` gathers the records of every CIFAR-10 table of a
profile (one per (attack, defense, seed, model weights), the latest kept); ``average`` averages each
defense's seconds over the attacks it ran on, beside the paper's RTX 3090 seconds (averaged there
over the 14 CIFAR-10 attacks).  Nothing is run here: a defense without records has no bar.
"""
import csv
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from . import settings
from .records import read_record, weights
from .tables import TABLES, get_table


def collect(profile: str, results_dir=None) -> pd.DataFrame:
    """Every record of ``results_dir/<table>/<profile>/records`` with a defense that ran (not
    'No defense') on named hardware, one per (attack, defense, seed, weights), the most recently
    finished kept."""
    root = Path(results_dir) if results_dir else settings.results_dir()
    rows = []
    for path in sorted(root.glob(f"*/{profile}/records/*.json")):
        table = path.parts[-4]
        if table in TABLES and get_table(table).dataset != "CIFAR-10":
            continue  # the paper's seconds are CIFAR-10's: ImageNet runtimes are not comparable
        record = read_record(path)
        if not record.get("device_name"):
            continue  # made before records named their hardware: a runtime on unknown hardware says nothing
        if record.get("seconds", 0) > 0 and record["method"] != "No defense":
            rows.append({"table": path.parts[-4], "attack": record["attack"], "defense": record["defense"],
                         "method": record["method"], "seed": record["seed"],
                         "seconds": record["seconds"], "device_name": record.get("device_name", "?"),
                         "load_average_1min": record.get("load_average_1min", np.nan),
                         "weights": weights(record),
                         "format": record.get("training_config", {}).get("format", 0),
                         "finished": record.get("finished", "")})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame[frame["defense"] == frame["method"]]  # a study's variants are not the method's runtime
    frame = frame.sort_values("finished", ascending=False)
    return frame.drop_duplicates(["attack", "defense", "seed", "weights"]).reset_index(drop=True)


def average(records: pd.DataFrame, defenses) -> pd.DataFrame:
    """Per defense: mean wall seconds over its records, how many attacks they cover, the hardware,
    the mean load average, and the paper's seconds."""
    paper = published_runtimes()
    rows = []
    for defense in defenses:
        group = records[records["defense"] == defense] if len(records) else records
        rows.append({"defense": defense, "seconds": group["seconds"].mean() if len(group) else np.nan,
                     "records": len(group), "attacks": ", ".join(sorted(set(group["attack"]))) if len(group) else "",
                     "hardware": ", ".join(sorted(set(group["device_name"]))) if len(group) else "",
                     "load_average": group["load_average_1min"].mean() if len(group) else np.nan,
                     "paper_seconds": paper.get(defense, np.nan)})
    return pd.DataFrame(rows)


def published_runtimes() -> dict:
    """{defense: seconds} from FIP's Figure 4."""
    text = resources.files("purilib.references").joinpath("fip_figure4_runtime.csv").read_text()
    return {row["defense"]: float(row["avg_runtime_s"]) for row in csv.DictReader(text.splitlines())}


def markdown(table: pd.DataFrame, profile: str) -> str:
    lines = [f"# FIP Figure 4: average purification runtime (profile `{profile}`)", "",
             "Ours: mean wall seconds of each defense over the records of this profile (every table), on the "
             "hardware named; paper: FIP Figure 4, one NVIDIA RTX 3090, averaged over the 14 CIFAR-10 attacks. A "
             "record made while other processes shared the machine is slower than one made alone: the host's load "
             "average at the end of each cell is shown. Records that do not name their hardware (made before records "
             "did) are left out.", "",
             "| Defense | seconds ours | records | attacks | hardware | mean load average | seconds paper |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        ours = "–" if np.isnan(r.seconds) else f"{r.seconds:.1f}"
        load = "–" if np.isnan(r.load_average) else f"{r.load_average:.1f}"
        paper = "–" if np.isnan(r.paper_seconds) else f"{r.paper_seconds:.1f}"
        lines.append(f"| {r.defense} | {ours} | {r.records} | {r.attacks or '–'} | {r.hardware or '–'} | {load} | "
                     f"{paper} |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, profile: str):
    """Bars: ours beside the paper's, per defense (log scale: a CPU's seconds and a GPU's differ by 100x)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(table), 3.2))
    x = np.arange(len(table))
    hardware = "; ".join(sorted({h for h in table["hardware"] if h})) or "no records"
    ax.bar(x - 0.2, table["seconds"], 0.4, label=f"ours ({profile}: {hardware})")
    ax.bar(x + 0.2, table["paper_seconds"], 0.4, label="paper (RTX 3090)")
    ax.set_xticks(x, table["defense"], rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("seconds per purification")
    ax.legend(fontsize=7)
    ax.set_title("FIP Figure 4: average runtime", fontsize=10)
    fig.tight_layout()
    return fig


def write(spec):
    """table.csv, table.md and runtime.png of ``spec`` (a checked RunSpec of table "fip-figure4"), from the
    records in the sibling folders of its output folder; returns a ``reports.Report``."""
    import matplotlib.pyplot as plt

    from .reports import Report
    out, profile = spec.output_dir, spec.profile.name
    out.mkdir(parents=True, exist_ok=True)
    table = average(collect(profile, out.parent.parent), spec.table.defenses)
    table.round(2).to_csv(out / "table.csv", index=False)
    text = markdown(table, profile)
    (out / "table.md").write_text(text)
    figure = plot(table, profile)
    figure.savefig(out / "runtime.png", dpi=120)
    plt.close(figure)
    outline = (", ".join(table["defense"]) + " | seconds positive where measured: "
               + str(bool((table["seconds"].dropna() > 0).all())))
    return Report(table, figure, [text], outline, ["table.csv", "table.md", "runtime.png"])
