"""What a table's run writes from its records, registered per table (``Table.report``).

``write(records, spec)`` writes every table's grid (``summary.write_grid``: table.csv, table.md, asr_acc.png)
and then the table's own report from ``REPORTS``: its sections appended to table.md, its figure and its
files.  It returns a :class:`Report`, which a notebook shows (``report.show()``) and whose ``outline``
(which cells were measured, and that the values are valid; machine-independent) nbval compares.
"""
import dataclasses

import pandas as pd

from .summary import (average_drop, average_drop_markdown, compact_png, sharpness_markdown, summarize,  # noqa: F401
                      runtime_ratios, table_outline, to_markdown, write_grid)
from .protocols import protocol_markdown  # noqa: F401


@dataclasses.dataclass
class Report:
    summary: pd.DataFrame
    figure: object              # the table's own figure, else the heat map of ASR and ACC
    sections: list              # Markdown shown in the notebook
    outline: str                # what nbval compares
    files: list                 # the names written into the output folder
    colors: int = 32            # of the notebook's copy of the figure (a gallery of images needs more)

    def show(self):
        from IPython.display import Image, Markdown, display
        for section in self.sections:
            display(Markdown(section))
        display(Image(compact_png(self.figure, colors=self.colors)))  # a small copy; the full figure is its PNG file


def _append(out, heading, text):
    with open(out / "table.md", "a") as f:
        f.write(f"\n## {heading}\n\n{text}")


def _title(spec):
    return f"{spec.table.paper}, {spec.table.title}"


def _grid(ratios_against=None):
    def report(records, summary, spec, heat_map):
        """A table of cells (NFT Table 1, the defenses, ...): the grid, its average drops, its protocols, and
        (``ratios_against``) each defense's wall seconds over that defense's on the same model."""
        sections = [to_markdown(summary, _title(spec), spec.profile.name)]
        drops = average_drop(summary, spec.table.id)
        sections += [average_drop_markdown(drops)] if len(drops) else []
        sections.append(protocol_markdown(records, spec.table.id))
        if ratios_against and ratios_against in set(summary["defense"]):
            ratios = runtime_ratios(summary, ratios_against).round(2)
            sections.append(f"## Wall seconds / {ratios_against}'s on the same model\n\n```\n{ratios.to_string()}\n```\n")
        return Report(summary, heat_map, sections, table_outline(summary), [])
    return report


def _sharpness(records, summary, spec, heat_map):
    """FIP Table 6: lambda_max and the trace by each protocol, and the flattening."""
    return Report(summary, heat_map, [sharpness_markdown(summary, _title(spec), spec.profile.name)],
                  table_outline(summary), [])


def _amounts(records, summary, spec, heat_map):
    """AWM Table 1: ASR / ACC against the clean images per class."""
    from .. import amounts
    text = amounts.markdown(summary)
    _append(spec.output_dir, "ASR / ACC against the clean images per class (the paper's numbers are not available)",
            text)
    figure = amounts.plot(summary, f"AWM Table 1 ({spec.profile.name})")
    figure.savefig(spec.output_dir / "amounts.png", dpi=120)
    return Report(summary, figure, [text], table_outline(summary), ["amounts.png"])


def _spectra(records, summary, spec, heat_map):
    """FIP Figure 1: the spectra (a, b) beside the paper's panels, and the training history (c)."""
    from .. import spectra
    history = spectra.history_table(records)
    history.round(4).to_csv(spec.output_dir / "history.csv", index=False)
    text = spectra.markdown(records)
    _append(spec.output_dir, "The spectra, ours beside the paper's panels (a, b)", text)
    figure = spectra.plot(records, f"FIP Figure 1 ({spec.profile.name})")
    figure.savefig(spec.output_dir / "spectra.png", dpi=120)
    outline = ("; ".join(f"{a}: {len(g)} epochs" for a, g in history.groupby("attack", sort=False))
               + " | values valid: "
               + str(bool(history["acc"].between(0, 100).all() and (records["trace"].abs() >= 0).all())))
    return Report(summary, figure, [text], outline, ["history.csv", "spectra.png"])


def _trajectory(records, summary, spec, heat_map):
    """FIP Figure 3: ACC / ASR / lambda_max along each defense."""
    from .. import trajectory
    points = trajectory.points_table(records)
    points.round(3).to_csv(spec.output_dir / "trajectory.csv", index=False)
    figure = trajectory.plot(points, f"FIP Figure 3 ({spec.profile.name})")
    figure.savefig(spec.output_dir / "trajectory.png", dpi=120)
    outline = ("; ".join(f"{a}: {len(g)} points" for a, g in points.groupby("attack", sort=False))
               + " | values valid: "
               + str(bool(points["acc"].between(0, 100).all() and (points["lambda_max"].abs() >= 0).all())))
    return Report(summary, figure, [trajectory.markdown(points)], outline, ["trajectory.csv", "trajectory.png"])


def _tsne(title):
    def report(records, summary, spec, heat_map):
        """FIP Figure 5 / NFT Figure 1: t-SNE of the features, and how separated the poisoned images are."""
        from .. import features
        text = features.separation_markdown(records)
        _append(spec.output_dir, "Poison separation (the share of poisoned images whose 10 nearest neighbours in "
                "feature space are mostly poisoned)", text)
        panels, scores = features.panels_from_records(records)
        figure = features.plot_tsne(panels, f"{title} ({spec.profile.name})", scores)
        figure.savefig(spec.output_dir / "tsne.png", dpi=120)
        outline = ("; ".join(f"{r.defense}: {len(r.tsne)} points" for r in records.itertuples())
                   + " | scores in [0, 1]: " + str(bool(records["poison_separation"].between(0, 1).all())))
        return Report(summary, figure, [text], outline, ["tsne.png"])
    return report


def _study(records, summary, spec, heat_map):
    """The NFT study: what the study finds, and what the masks did."""
    from .. import studies
    masks = studies.mask_table(records)
    masks.round(3).to_csv(spec.output_dir / "masks.csv", index=False)
    findings = studies.findings(masks)
    _append(spec.output_dir, f"What the study finds ({spec.profile.name} profile)",
            f"{findings}\n\n## What the masks did\n\n{studies.mask_markdown(masks)}")
    return Report(summary, heat_map, [findings, studies.mask_markdown(masks)], table_outline(summary), ["masks.csv"])


# name -> a function of the report's arguments (``Table.report[1:]``) that returns the report
REPORTS = {"grid": _grid, "tsne": _tsne, "sharpness": lambda: _sharpness, "amounts": lambda: _amounts,
           "spectra": lambda: _spectra, "trajectory": lambda: _trajectory, "study": lambda: _study}


def write(records: pd.DataFrame, spec) -> Report:
    """The table's files from ``records`` into ``spec.output_dir``: its grid, then its own report."""
    out = spec.output_dir
    out.mkdir(parents=True, exist_ok=True)
    summary, heat_map = write_grid(records, spec.table.id, spec.profile.name, out, spec.profile.clean_per_class)
    name, *arguments = spec.table.report
    if name not in REPORTS:
        raise ValueError(f"{spec.table.id}: unknown report {name!r} (reports: {', '.join(REPORTS)})")
    report = REPORTS[name](*arguments)(records, summary, spec, heat_map)
    report.files = ["table.csv", "table.md", "asr_acc.png", *report.files]
    return report
