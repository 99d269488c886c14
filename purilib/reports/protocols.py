"""What protocol each number used, and what the defenses logged on the way: the clean data's source per
column, NFT's checkpoints (ACC / ASR every 200 steps, the release's cadence), RNP's unlearning and
pruning."""
import pandas as pd

from ..tables import get_table

SOURCE_NOTE = {"reserve": "the held-out reserve (images the model never saw)",
               "train": "the training split the model learned from (poisoned images excluded), as the authors' code"}


def clean_sources_markdown(records: pd.DataFrame, table_id: str) -> str:
    """Which clean data each column was given: the table's setting, and what the records say."""
    table = get_table(table_id)
    columns = list(dict.fromkeys(records["defense"])) if len(records) else list(table.defenses)
    lines = ["## Clean data per column", "", "| Defense | the table gives it clean data from | its records were made "
             "with |", "|---|---|---|"]
    for column in columns:
        if column == "No defense":
            continue
        rows = records[records["defense"] == column] if len(records) else records
        # records made before the setting existed drew from the reserve, the only source then
        made = sorted(set(rows["clean_source"].fillna("reserve"))) if "clean_source" in rows else ["reserve"]
        lines.append(f"| {column} | {SOURCE_NOTE[table.clean_source(column)]} | {', '.join(made)} |")
    return "\n".join(lines) + "\n"


def _runs(records, defense):
    """The records of ``defense`` that carry its logged statistics."""
    if "defense_stats" not in records or not len(records):
        return []
    method = records["method"].fillna(records["defense"]) if "method" in records else records["defense"]
    return [r for r in records[method == defense].to_dict("records") if isinstance(r["defense_stats"], dict)]


def checkpoints_markdown(records: pd.DataFrame, defense="NFT") -> str:
    """ACC / ASR at each checkpoint the defense's run kept (a fixed class-balanced test subset): would any
    point of the run, picked as a checkpoint, reach the paper's ASR?"""
    rows = [r for r in _runs(records, defense) if r["defense_stats"].get("checkpoints")]
    if not rows:
        return ""
    steps = sorted({p["step"] for r in rows for p in r["defense_stats"]["checkpoints"]})
    lines = [f"## {defense}'s checkpoints: ASR / ACC on a fixed test subset every {steps[0]} steps", "",
             "| Attack | Column | " + " | ".join(f"step {s}" for s in steps) + " | end (full test set) |",
             "|---|---|" + "---|" * (len(steps) + 1)]
    for r in rows:
        at = {p["step"]: p for p in r["defense_stats"]["checkpoints"]}
        lines.append(f"| {r['attack']} | {r['defense']} | " + " | ".join(
            f"{at[s]['asr']:.1f} / {at[s]['acc']:.1f}" if s in at and "asr" in at[s] else "–" for s in steps)
            + f" | {r['asr']:.1f} / {r['acc']:.1f} |")
    return "\n".join(lines) + "\n"


def rnp_markdown(records: pd.DataFrame) -> str:
    """RNP's unlearning (steps until the clean accuracy fell to the threshold) and pruning (neurons zeroed),
    beside the authors' README run (13 epochs of 4 steps from 97.8%; 24 of 4800 neurons at 0.2)."""
    rows = [r for r in _runs(records, "RNP") if "unlearning_steps" in r["defense_stats"]]
    if not rows:
        return ""
    lines = ["## RNP: unlearning and pruning", "",
             "The authors' README run (BadNets, ResNet-18, 500 training images): 13 unlearning epochs (~52 steps) "
             "from a training accuracy of 97.8%, 24 of 4800 neurons pruned at threshold 0.2.", "",
             "| Attack | clean data | unlearning steps | accuracy per pass | pruned | of | would prune at 0.3 / 0.5 / 0.7 "
             "| ASR | ACC |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["defense_stats"]
        sweep = s.get("pruned_by_threshold", {})
        more = " / ".join(str(sweep.get(t, "–")) for t in ("0.30", "0.50", "0.70"))
        source = r.get("clean_source") if isinstance(r.get("clean_source"), str) else "reserve"
        passes = s.get("unlearning_passes") or ([s["unlearning_accuracy"]] if "unlearning_accuracy" in s else [])
        lines.append(f"| {r['attack']} | {source} | {s['unlearning_steps']} | "
                     f"{' -> '.join(f'{a:.2f}' for a in passes) or '–'} | {s['pruned_neurons']} | {s['total_neurons']} | "
                     f"{more} | {r['asr']:.1f} | {r['acc']:.1f} |")
    return "\n".join(lines) + "\n"


def protocol_markdown(records: pd.DataFrame, table_id: str) -> str:
    """Every protocol section that the records give material for."""
    parts = [clean_sources_markdown(records, table_id), checkpoints_markdown(records), rnp_markdown(records)]
    return "\n".join(p for p in parts if p)
