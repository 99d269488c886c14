"""What a table measures beyond ACC / ASR, registered by name (``Table.measures``).

- ``sharpness`` (FIP Table 6): lambda_max and the Hessian's trace of the purified model, by each of the
  profile's protocols (``hessian.SHARPNESS_PROTOCOLS``; the first the headline, in the record's own columns);
- ``trajectory`` (FIP Figure 3): ACC / ASR / lambda_max at points along the defense (a callback);
- ``spectrum`` (FIP Figure 1 a, b): the Hessian's spectral density of the purified model;
- ``history`` (FIP Figure 1 c): ACC / ASR / lambda_max of the snapshots the model's training kept;
- ``features`` (FIP Figure 5, NFT Figure 1): t-SNE of the purified model's features.

A measure's ``settings`` are the profile's settings its numbers depend on (part of a record's identity:
a record is reused only when they match); ``during`` (optional) prepares what is measured while the defense
runs; ``after`` returns the record's fields.  The trajectory, the spectrum and the history use the Hessian
data of the headline sharpness protocol (``Cell.hessian_images``).
"""
import dataclasses
from typing import Callable

from . import features, spectra, trajectory
from .hessian import sharpness


@dataclasses.dataclass
class Cell:
    """What a measure sees of one cell: the profile, the row (model, data, attack), the column's clean
    set, the defense (None for 'No defense'), the purified model (the row's model without a defense)."""
    prof: object
    row: object
    clean: object
    defense: object
    seed: int
    device: str
    cache_dir: object = None
    hessian_images: object = None
    hessian_name: str = None
    purified: object = None
    points: list = dataclasses.field(default_factory=list)  # the trajectory's, filled during the defense


@dataclasses.dataclass(frozen=True)
class Measure:
    settings: Callable          # prof -> the settings its numbers depend on
    after: Callable             # cell -> the record's fields
    during: Callable = None     # cell -> None: set up before the defense runs (its callback)
    hessian_data: bool = False  # uses the headline protocol's Hessian data


def _sharpness(cell):
    out, headline = {}, next(iter(cell.prof.sharpness))
    for protocol, settings in cell.prof.sharpness.items():
        images, name = cell.row.hessian_data(protocol, settings, cell.clean)
        out[protocol] = sharpness(cell.purified, images, seed=cell.seed, data_name=name,
                                  **{k: v for k, v in settings.items() if k in ("iterations", "samples", "tol")})
    return {"sharpness": out, **out[headline], "sharpness_protocol": headline}


def _trajectory_during(cell):
    if cell.defense is None:
        return
    t, row = cell.prof.trajectory, cell.row
    subset = trajectory.test_subset(row.test, t["test_images"])
    cell.points.append(trajectory.start_point(row.model, cell.hessian_images, subset, row.attack, t["iterations"],
                                              cell.device, cell.prof.bf16))
    cell.defense.callback = trajectory.recorder(cell.points, cell.hessian_images, subset, row.attack, max(
        1, cell.defense.config["steps"] // t["points"]), t["iterations"], cell.device, cell.prof.bf16)


MEASURES = {
    "sharpness": Measure(settings=lambda prof: prof.sharpness, after=_sharpness),
    "trajectory": Measure(settings=lambda prof: prof.trajectory, during=_trajectory_during, hessian_data=True,
                          after=lambda cell: {"trajectory": cell.points} if cell.points else {}),
    "spectrum": Measure(settings=lambda prof: prof.spectrum, hessian_data=True,
                        after=lambda cell: spectra.spectrum(cell.purified, cell.hessian_images, seed=cell.seed,
                                                            data_name=cell.hessian_name, **cell.prof.spectrum)),
    "features": Measure(settings=lambda prof: prof.features,
                        after=lambda cell: features.measure(cell.purified, cell.row.test, cell.row.attack,
                                                            seed=cell.seed, **cell.prof.features)),
    "history": Measure(settings=lambda prof: prof.history, hessian_data=True,
                       after=lambda cell: {"history": spectra.history(
                           cell.row.model, cell.row.manifest, cell.hessian_images, cell.row.test, cell.row.attack,
                           device=cell.device, bf16=cell.prof.bf16, cache_dir=cell.cache_dir, **cell.prof.history)}),
}
# in every measuring table's identity, whatever it measures: the records made before the others existed have them
IN_EVERY_IDENTITY = ("sharpness", "trajectory")


def identity(names, prof) -> dict:
    """The settings the measurements ``names`` depend on, as a record's identity holds them."""
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure {unknown[0]!r} (measures: {', '.join(MEASURES)})")
    return {"names": list(names), **{m: MEASURES[m].settings(prof) for m in MEASURES
                                     if m in IN_EVERY_IDENTITY or m in names}}
