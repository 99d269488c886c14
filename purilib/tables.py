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
    reference_files: tuple
    profiles: tuple = ("smoke", "cpu", "gpu", "paper")
    variants: dict = None  # column -> (defense, settings): a column that is a defense at other settings
    gathers: bool = False  # True: runs nothing, reads the records of the other tables (a figure of them)
    measures: tuple = ()   # extra measurements of every cell's model: "sharpness" (hessian.sharpness)
    clean_per_class: int = None  # the defenses' clean images per class when the run names none (None: the profile's)
    clean_amounts: tuple = ()  # a grid over amounts of clean data (per class; those the profile reserves)
    models: tuple = ()  # a grid over networks (None: the profile's network)
    dataset: str = "CIFAR-10"  # the paper's data set: the profiles' recipe for it, and its published cells
    # profile -> the rows it runs when none are named (every row otherwise): smoke checks the plumbing, and
    # the rows a table shares with NFT Table 1 are checked there; this keeps the test suite in its budget
    default_rows: dict = None
    # column -> where its clean data come from (data.CLEAN_SOURCES; "reserve", the held-out pool, otherwise):
    # a paper table gives a method the data its authors' code gives it
    clean_sources: dict = None
    description: str = ""  # one line for --list
    # what its run writes beyond the grid: a name in reports.REPORTS and that report's arguments
    report: tuple = ("grid",)

    def rows(self, profile: str) -> tuple:
        """The rows a run on ``profile`` takes when it names none."""
        return (self.default_rows or {}).get(profile, self.attacks)

    def clean_source(self, column) -> str:
        return (self.clean_sources or {}).get(column, "reserve")

    def method(self, column):
        """The defense a column runs and the settings it overrides: ('NFT', {'lr': 0.5}) for a study's
        column, (column, {}) for a table whose columns are the defenses themselves."""
        return (self.variants or {}).get(column, (column, {}))


# the 14 attacks of NFT's Table 1 (and FIP's Tables), in the paper's row order
ATTACK_ROWS = ("BadNets", "Blend", "Troj-one", "Troj-all", "SIG", "Dyn-one", "Dyn-all", "CLB", "CBA", "FBA",
               "WaNet", "ISSBA", "LIRA", "BPPA")
SEED_DEFENSES = ("NFT", "FIP", "Fast FIP", "NGF", "AWM")
BASELINES = ("FT", "FP", "NAD", "ANP", "I-BAU", "FT-SAM", "RNP")

TABLES = {
    "nft-table1": Table(
        id="nft-table1", paper="NFT (ECCV 2024)",
        title="Table 1: ASR / ACC after purification, CIFAR-10, PreAct-ResNet-18, 1% clean data",
        notebook="nft_table1.ipynb",
        attacks=("Benign",) + ATTACK_ROWS,
        defenses=("No defense", "FT", "ANP", "I-BAU", "AWM", "FT-SAM", "RNP", "NFT"),
        reference_files=("nft_table1.csv",),
        # RNP's code (bboylyg/RNP, main.py) draws its 1% from the training split the model learned
        clean_sources={"RNP": "train"},
        description="the 14 attacks against NFT and the baselines, beside the published cells"),
    "attacks": Table(
        id="attacks", paper="NFT (ECCV 2024)",
        title="The attack suite: ACC / ASR / RA of each backdoored model against the benign model",
        notebook="attacks.ipynb",
        attacks=("Benign",) + ATTACK_ROWS,
        defenses=("No defense",),
        reference_files=("nft_table1.csv",),
        description="each attack's model before any defense, and a gallery of its triggers"),
    "defenses": Table(
        id="defenses", paper="purilib",
        title="Every defense against the same backdoored models: ACC / ASR / RA / DER, seconds, trainable "
              "parameters (CIFAR-10, PreAct-ResNet-18)",
        notebook="defenses.ipynb",
        attacks=ATTACK_ROWS,
        defenses=("No defense",) + SEED_DEFENSES + BASELINES,
        reference_files=("nft_table1.csv", "fip_table6.csv"),
        description="all 12 defenses side by side: effectiveness, cost and wall time",
        report=("grid", "NFT")),
}

# NFT Table 1's ImageNet half: its rows and columns as the paper prints them
TABLES["nft-table1-imagenet"] = Table(
    id="nft-table1-imagenet", paper="NFT (ECCV 2024)",
    title="Table 1, ImageNet half: ASR / ACC after purification, ImageNet, ResNet-50",
    notebook="nft_table1_imagenet.ipynb",
    attacks=("Benign", "BadNets", "Troj-one", "Troj-all", "Blend", "SIG", "CLB", "Dyn-one", "Dyn-all", "LIRA",
             "WaNet", "ISSBA"),
    defenses=("No defense", "ANP", "I-BAU", "AWM", "FT-SAM", "RNP", "NFT"),
    reference_files=("nft_table1.csv",), profiles=("smoke", "gpu"), dataset="ImageNet",
    default_rows={"smoke": ("BadNets", "WaNet")},  # a patch and a warp at 64x64
    description="the ImageNet half, on your ImageNet folder (--data-root; gpu profile), beside the published cells")

# NFT's released setting beside variations that each change one of its ingredients, and "all loosened":
# the four that bound how far the masks move changed at once (lr 0.5, 3000 steps, no regulariser, no clamp)
NFT_STUDY_VARIANTS = {
    "released": ("NFT", {}),
    "all BNs": ("NFT", {"mask_layers": "all"}),
    "BN eval": ("NFT", {"bn_train_mode": False}),
    "lr 0.2": ("NFT", {"lr": 0.2, "final_lr": 0.08}),
    "lr 0.5": ("NFT", {"lr": 0.5, "final_lr": 0.2}),
    "3000 steps": ("NFT", {"steps": 3000}),
    "no MixUp": ("NFT", {"mixup_alpha": 0.0}),
    "no regulariser": ("NFT", {"mask_reg": 0.0}),
    "no clamp": ("NFT", {"clamp": False}),
    "all loosened": ("NFT", {"lr": 0.5, "final_lr": 0.2, "steps": 3000, "mask_reg": 0.0, "clamp": False}),
}
TABLES["nft-study"] = Table(
    id="nft-study", paper="purilib",
    title="NFT study: the released setting beside variations of each ingredient (masks, BN mode, learning rate, "
          "steps, MixUp, regulariser, clamp)",
    notebook="nft_study.ipynb", attacks=("BadNets", "Blend"), defenses=("No defense",) + tuple(NFT_STUDY_VARIANTS),
    reference_files=(), variants=NFT_STUDY_VARIANTS,
    description="does any setting of NFT's own ingredients remove BadNets / Blend, and at what ACC cost?",
    report=("study",))

TABLES["fip-table6"] = Table(
    id="fip-table6", paper="FIP (CCS 2024)",
    title="Table 6: loss sharpness (Hessian lambda_max and trace) with ASR / ACC: the backdoored model, after ANP, "
          "after FIP (CIFAR-10, PreAct-ResNet-18)",
    notebook="fip_table6.ipynb", attacks=("BadNets", "Blend", "Troj-one", "Dyn-one", "CLB", "SIG", "LIRA", "ISSBA"),
    defenses=("No defense", "ANP", "FIP"), reference_files=("fip_table6.csv",), measures=("sharpness",),
    default_rows={"smoke": ("BadNets", "Blend")},
    description="is a backdoored model's loss sharper, and does purification flatten it?",
    report=("sharpness",))

TABLES["fip-figure3"] = Table(
    id="fip-figure3", paper="FIP (CCS 2024)",
    title="Figure 3: lambda_max and ACC / ASR during FIP's purification (BadNets, TrojanNN, CLB, SIG)",
    notebook="fip_figure3.ipynb", attacks=("BadNets", "Troj-one", "CLB", "SIG"), defenses=("FIP",),
    default_rows={"smoke": ("BadNets", "Troj-one")},
    reference_files=(), measures=("trajectory",),
    description="does the loss flatten as the backdoor goes? (the paper's curves are not available as numbers)",
    report=("trajectory",))

TABLES["fip-figure4"] = Table(
    id="fip-figure4", paper="FIP (CCS 2024)",
    title="Figure 4: average purification runtime per defense (from the records of every table of a profile)",
    notebook="fip_figure4.ipynb", attacks=ATTACK_ROWS, defenses=("ANP", "I-BAU", "AWM", "FT-SAM", "RNP", "FIP"),
    reference_files=("fip_figure4_runtime.csv",), gathers=True,
    description="seconds per purification, ours on the hardware named beside the paper's RTX 3090")

TABLES["fip-figure1"] = Table(
    id="fip-figure1", paper="FIP (CCS 2024)",
    title="Figure 1: the Hessian's eigen-spectral density of benign and backdoored models (lambda_max, trace, "
          "ACC, ASR), and lambda_max with ACC / ASR over the training epochs (CIFAR-10, PreAct-ResNet-18)",
    notebook="fip_figure1.ipynb", attacks=("Benign", "BadNets", "Troj-one", "CLB", "SIG"), defenses=("No defense",),
    default_rows={"smoke": ("Benign", "Troj-one")},
    reference_files=("fip_figure1_spectra.csv",), measures=("spectrum", "history"),
    description="is a backdoored model's loss sharper than a benign one's, and since when in training?",
    report=("spectra",))

TABLES["fip-figure5"] = Table(
    id="fip-figure5", paper="FIP (CCS 2024)",
    title="Figure 5: t-SNE of a BadNets PreAct-ResNet-18's features before and after FIP (CIFAR-10)",
    notebook="fip_figure5.ipynb", attacks=("BadNets",), defenses=("No defense", "FIP"), reference_files=(),
    measures=("features",),
    description="do the poisoned images leave their own cluster after FIP? (t-SNE, and a neighbour score)",
    report=("tsne", "FIP Figure 5: BadNets"))

NFT_FIGURE1_VARIANTS = {"one-shot NFT without the regulariser": ("NFT", {"mask_reg": 0.0}),
                        "one-shot NFT": ("NFT", {})}
TABLES["nft-figure1"] = Table(
    id="nft-figure1", paper="NFT (ECCV 2024)",
    title="Figure 1: t-SNE of a backdoored PreAct-ResNet-18's features before purification and after one-shot "
          "NFT without and with the mask regulariser (CIFAR-10, BadNets)",
    notebook="nft_figure1.ipynb", attacks=("BadNets",), defenses=("No defense",) + tuple(NFT_FIGURE1_VARIANTS),
    reference_files=(), variants=NFT_FIGURE1_VARIANTS, measures=("features",), clean_per_class=1,
    description="one clean image per class: does NFT scatter the poisoned cluster, and what does its regulariser do?",
    report=("tsne", "NFT Figure 1: BadNets, one-shot"))

TABLES["awm-table1"] = Table(
    id="awm-table1", paper="AWM (NeurIPS 2022)",
    title="Table 1: backdoor removal against the amount of clean data (per class), ResNet-18 and VGG-16-BN "
          "(CIFAR-10; the paper's numbers are not available here)",
    notebook="awm_table1.ipynb", attacks=("BadNets", "Blend"),
    defenses=("No defense", "FT", "ANP", "I-BAU", "AWM"), reference_files=(),
    clean_amounts=(500, 100, 50, 10, 1), models=("resnet18", "vgg16_bn"), default_rows={"smoke": ("BadNets",)},
    description="how little clean data does each defense need? (500 to 1 image per class, two networks)",
    report=("amounts",))

# the published tables call "No defense" 'none'
_REFERENCE_NAMES = {"none": "No defense"}
# FIP's Table 6 names two attacks as NFT's Table 1 does not; its "none" rows have the ACC of NFT's
# Troj-one (89.57) and Dyn-one (92.52): the same models
_REFERENCE_ATTACKS = {"Trojan": "Troj-one", "Dynamic": "Dyn-one",
                      # FIP Figure 1: "none" is the benign model, TrojanNet has Troj-one's ACC (89.57)
                      "TrojanNet": "Troj-one", "none": "Benign"}


def get_table(table_id: str) -> Table:
    if table_id not in TABLES:
        raise ValueError(f"unknown table '{table_id}'; choose one of {sorted(TABLES)}")
    return TABLES[table_id]


def resolve_tables(name: str):
    """'nft-table1' -> [that table]; 'table1' -> Table 1 of every paper."""
    if name in TABLES:
        return [TABLES[name]]
    matches = [t for t in TABLES.values() if "-" in t.id and t.id.split("-", 1)[1] == name]
    if not matches:
        import difflib
        known = sorted(TABLES) + sorted({t.split("-", 1)[1] for t in TABLES if "-" in t})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown table '{name}'{hint} (./reproduce.sh --list shows every id)")
    return matches


def published(table: Table, dataset="CIFAR-10") -> dict:
    """{(attack, defense): {'asr': .., 'acc': .., 'source': ..}} as printed in the papers (the first
    reference file that has a cell wins)."""
    out = {}
    for name in table.reference_files:
        text = resources.files("purilib.references").joinpath(name).read_text()
        for row in csv.DictReader(text.splitlines()):
            if row.get("dataset", dataset) != dataset:
                continue
            defense = row.get("defense", "none")  # a figure of models before any defense has no such column
            defense = _REFERENCE_NAMES.get(defense, defense)
            cell = {k: float(row[k]) for k in ("asr", "acc", "lambda_max", "trace_hessian") if row.get(k)}
            attack = _REFERENCE_ATTACKS.get(row["attack"], row["attack"])
            source = f"{row['paper']} {row.get('table') or row.get('figure')}"
            out.setdefault((attack, defense), {**cell, "source": source})
    return out
