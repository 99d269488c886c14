"""Where purilib reads data and writes caches and results.

Every location is a setting, never a hard-coded path: an explicit argument wins,
then an environment variable, then a default.

- ``PURILIB_DATA_ROOT``: folder holding CIFAR-10 (torchvision's
  ``cifar-10-batches-py``, an image-folder tree ``cifar10/{train,test}/<class>/``,
  or a ``.tar.gz`` of that tree).  Default ``./data``.
- ``PURILIB_CACHE_DIR``: decoded data sets and trained models.  Default
  ``~/.cache/purilib``.  Weights live here, never in git.
- ``PURILIB_RESULTS_DIR``: where tables write their records.  Default the
  ``results/`` folder of the checkout purilib was installed from.
- ``PURILIB_WORKERS``: the most worker processes a run asking for ``workers="auto"`` starts (a positive
  integer; default no cap).  The test suite sets 1: its pytest-xdist processes already share out the cores.
- ``PURILIB_COMPILE``: defenses (registry names, comma-separated) whose table cells run their
  compiled loop (``compile="auto"``: on CUDA only).  Default none; the GPU campaign sets it for
  the loops a probe on the same machine measured faster and equal (``campaign run --compile-from``).
"""
import os
from pathlib import Path


class DataNotFoundError(FileNotFoundError):
    """The data root lacks the data a run needs (here, not in ``data``: a request is checked without torch)."""


def data_root(explicit=None) -> Path:
    return Path(explicit or os.environ.get("PURILIB_DATA_ROOT") or "data").expanduser()


def cache_dir(explicit=None) -> Path:
    path = Path(explicit or os.environ.get("PURILIB_CACHE_DIR") or "~/.cache/purilib").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(explicit=None) -> Path:
    if explicit or os.environ.get("PURILIB_RESULTS_DIR"):
        return Path(explicit or os.environ["PURILIB_RESULTS_DIR"]).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "results").is_dir():
        return checkout / "results"
    return Path("results")


def compiled_defenses() -> set:
    return {name.strip() for name in os.environ.get("PURILIB_COMPILE", "").split(",") if name.strip()}


def auto_workers_cap():
    """``PURILIB_WORKERS`` as a count, or None (unset or empty: no cap)."""
    text = os.environ.get("PURILIB_WORKERS", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"PURILIB_WORKERS must be a positive integer (the most workers 'auto' starts), not {text!r}")
    return int(text)
