"""A table run, checked once: :class:`RunSpec`.

Every way into a run (``purilib run`` / ``./reproduce.sh`` before the kernel starts, a notebook from its
parameters cell with ``RunSpec.from_parameters``, the GPU campaign) builds one ``RunSpec``; ``RunSpec.build``
is the one place a request is validated, each refusal one line naming the fix, and where the profile's name
becomes a ``Profile`` (``profiles.resolve``: once for the table's data set, once per other network).  The
spec holds the table, the resolved profile and each network's recipe, the grids (network x amount of clean
data), the rows, columns and seeds, and where the run reads and writes; it is passed down whole.
"""
import dataclasses
import difflib
import functools
from pathlib import Path

from . import settings
from .profiles import Profile, image_size, reserved_per_class, resolve
from .tables import Table, get_table

EXECUTORS = ("local", "ray")


def output_dir_for(table_id, profile, output_dir=None) -> Path:
    """Where a table's run writes: ``output_dir``, else ``<results>/<table>/<profile>/``."""
    return Path(output_dir) if output_dir else settings.results_dir() / table_id / profile


def _refuse_unknown(requested, allowed, kind, table):
    """One line for the first name the table does not have, with the closest it has."""
    for name in requested:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"{table.id} has no {kind} '{name}'{hint} (unknown {kind.split()[-1].strip('()')}s; it "
                             f"has: {', '.join(allowed)})")


def _positive(value, what):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return value


def check_model(name, table, size):
    """``name`` is a network that takes the table's ``size`` x ``size`` images."""
    from .models import MODELS
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        raise ValueError(f"unknown model '{name}'" + (f"; did you mean '{close[0]}'?" if close else "")
                         + f" (models: {', '.join(MODELS)})")
    native = _native_size(name)
    if table.dataset == "CIFAR-10" and native != (32, 32):
        raise ValueError(f"model '{name}' takes {native[0]}x{native[1]} images; {table.id}'s data are 32x32 "
                         "(use it on your own data: see the README, 'Purify your own model')")
    _builds_at(name, size)  # vgg16_bn takes 32x32 images only: it says so


# each builds a small network (a quarter of a second), once per process: a campaign's queue checks 84 units
@functools.lru_cache(maxsize=None)
def _native_size(name) -> tuple:
    from .models import MODELS
    return tuple(MODELS[name](num_classes=10, width=0.125).input_size)


@functools.lru_cache(maxsize=None)
def _builds_at(name, size) -> bool:
    from .models import create_model
    create_model(name, width=0.125, input_size=(size, size))
    return True


@dataclasses.dataclass(frozen=True)
class RunSpec:
    table: Table
    profile: Profile            # resolved for the table's data set (its network: the profile's)
    grids: tuple                # (network or None, clean images per class) pairs
    attacks: tuple
    defenses: tuple
    seeds: int
    output_dir: Path
    device: str = "auto"
    data_root: str = None
    cache_dir: str = None
    workers: object = "auto"    # a count, or "auto"
    executor: str = "local"
    ray_address: str = None
    from_records: bool = False
    progress: bool = True
    recipes: dict = None        # network -> the profile with it as every model's network (None: the profile's)

    def recipe(self, network) -> Profile:
        """The profile the models of ``network`` (a grid's; None: the profile's own) are trained and recorded with."""
        return self.recipes[network]

    @property
    def networks(self):
        return list(dict.fromkeys(network for network, _ in self.grids))

    @property
    def amounts(self):
        return list(dict.fromkeys(k for _, k in self.grids))

    @classmethod
    def build(cls, table_id, profile="smoke", attacks=None, defenses=None, seeds=1, clean_per_class=None,
              model=None, device="auto", data_root=None, cache_dir=None, output_dir=None, workers="auto",
              executor="local", ray_address=None, from_records=False, progress=True, log=print) -> "RunSpec":
        """The request checked: names, amounts, networks, seeds, workers, executor (each refusal one line)."""
        table = get_table(table_id)
        prof = resolve(profile, table.dataset)  # a profile without the table's data set's recipe says so
        if prof.name not in table.profiles:
            raise ValueError(f"table {table.id} has no profile '{prof.name}' (it has: {', '.join(table.profiles)})")
        attacks = tuple(attacks or table.rows(prof.name))
        defenses = tuple(defenses or table.defenses)
        _refuse_unknown(attacks, table.attacks, "row (attack)", table)
        _refuse_unknown(defenses, table.defenses, "column (defense)", table)
        _positive(seeds, "seeds")
        reserve = reserved_per_class(prof)
        if clean_per_class is not None:
            amounts = [clean_per_class]
        elif table.clean_amounts:  # a table over amounts of clean data (AWM Table 1): those the profile reserves
            amounts = [k for k in table.clean_amounts if k <= reserve]
            if len(amounts) < len(table.clean_amounts):
                log(f"{table.id} ({prof.name}): {sorted(set(table.clean_amounts) - set(amounts), reverse=True)} "
                    f"clean images per class left out: the profile reserves {reserve} per class")
        else:  # the table's own setting (NFT Figure 1: one-shot), else the profile's
            amounts = [table.clean_per_class or prof.clean_per_class]
        for k in amounts:
            _positive(k, "clean_per_class")
            if k > reserve:
                raise ValueError(f"clean_per_class must be in 1..{reserve}: the {prof.name} profile reserves {reserve} "
                                 f"clean images per class for the defenses of {table.id}, not {k}")
        if isinstance(model, str) and "," in model:  # several networks side by side: "preact_resnet18,resnet18"
            model = [name.strip() for name in model.split(",") if name.strip()]
        networks = list(model) if isinstance(model, (list, tuple)) else [model] if model is not None \
            else list(table.models or [None])
        for network in networks:
            if network is not None:
                check_model(network, table, image_size(prof))
        if workers != "auto" and not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
            raise ValueError(f"workers must be a positive integer or 'auto', not {workers!r}")
        if executor not in EXECUTORS:
            close = difflib.get_close_matches(executor, EXECUTORS, n=1)
            raise ValueError(f"unknown executor '{executor}'" + (f"; did you mean '{close[0]}'?" if close else "")
                             + " (local or ray)")
        out = output_dir_for(table.id, prof.name, output_dir)
        return cls(table=table, profile=prof, grids=tuple((n, k) for n in networks for k in amounts),
                   attacks=attacks, defenses=defenses, seeds=seeds, output_dir=out, device=device,
                   data_root=data_root, cache_dir=cache_dir, workers=workers, executor=executor,
                   ray_address=ray_address, from_records=from_records, progress=progress,
                   recipes={n: prof if n is None else resolve(profile, table.dataset, n) for n in networks})

    @classmethod
    def from_parameters(cls, table_id, namespace: dict) -> "RunSpec":
        """The spec of a notebook's run: ``build`` with the keywords its parameters cell (papermill's) defines,
        ``RunSpec.from_parameters(TABLE, globals())``."""
        import inspect
        names = set(inspect.signature(cls.build).parameters) - {"cls", "table_id", "log"}
        return cls.build(table_id, **{name: namespace[name] for name in names if name in namespace})
