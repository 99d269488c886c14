"""Table registry: each paper table this package reproduces.

A table names its notebook, its grid (attacks x defenses), the profiles it
runs under and the published numbers it is compared with.  ``table1`` on the
command line means Table 1 of every paper that registers one.
"""
import csv
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Table:
    id: str
    paper: str
    title: str
    notebook: str
    attacks: tuple
    defenses: tuple
    reference_file: str
    profiles: tuple = ("smoke", "cpu", "paper")


TABLES = {
    "nft-table1": Table(
        id="nft-table1", paper="NFT (ECCV 2024)",
        title="Table 1: ASR / ACC after purification, CIFAR-10, PreAct-ResNet-18, 1% clean data",
        notebook="nft_table1.ipynb",
        attacks=("Benign", "BadNets", "Blend"),
        defenses=("No defense", "FT", "NFT"),
        reference_file="nft_table1.csv"),
}

# the published tables call "No defense" 'none'
_REFERENCE_NAMES = {"none": "No defense"}


def get_table(table_id: str) -> Table:
    if table_id not in TABLES:
        raise ValueError(f"unknown table '{table_id}'; choose one of {sorted(TABLES)}")
    return TABLES[table_id]


def resolve_tables(name: str):
    """'nft-table1' -> [that table]; 'table1' -> Table 1 of every paper."""
    if name in TABLES:
        return [TABLES[name]]
    matches = [t for t in TABLES.values() if t.id.split("-", 1)[1] == name]
    if not matches:
        raise ValueError(f"unknown table '{name}'; choose one of {sorted(TABLES)} or a suffix like 'table1'")
    return matches


def published(table: Table, dataset="CIFAR-10") -> dict:
    """{(attack, defense): {'asr': .., 'acc': ..}} as printed in the paper."""
    text = resources.files("purilib.references").joinpath(table.reference_file).read_text()
    out = {}
    for row in csv.DictReader(text.splitlines()):
        if row.get("dataset", dataset) != dataset:
            continue
        defense = _REFERENCE_NAMES.get(row["defense"], row["defense"])
        out[(row["attack"], defense)] = {k: float(row[k]) for k in ("asr", "acc") if row.get(k)}
    return out
