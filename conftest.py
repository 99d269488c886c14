"""Test-wide settings: results and caches go to a temporary folder, never into the
checkout or the user's cache (even when PURILIB_CACHE_DIR / PURILIB_RESULTS_DIR are set); progress bars off.  Set here (before any test or
nbval kernel starts) so that notebooks executed by nbval inherit them.

The suite runs in pytest-xdist processes (pyproject's addopts: ``-n auto --dist loadfile``).  They share
one temporary folder, made by the controlling process: a model one of them trains, the others load (the
cache lets one process train it while the others wait).  Each module, and each notebook, runs whole in
one process (its module fixtures built once, a notebook's cells in one kernel); a notebook that reads
what a test module leaves (its table's records, its models) runs after it, in the same process."""
import os
import shutil
import tempfile

import pytest

_worker = os.environ.get("PYTEST_XDIST_WORKER")
_scratch = os.environ.get("PURILIB_TEST_SCRATCH") if _worker else None
if not _scratch:
    _scratch = tempfile.mkdtemp(prefix="purilib-tests-")
    os.environ["PURILIB_TEST_SCRATCH"] = _scratch  # for the xdist processes, started after this
# whatever the user's PURILIB_* say: the suite trusts no model it did not train itself (a cached model made
# with other thread counts is other weights), and writes nothing where the user keeps results
os.environ["PURILIB_RESULTS_DIR"] = os.path.join(_scratch, "results")
os.environ["PURILIB_CACHE_DIR"] = os.path.join(_scratch, "cache")
os.environ["PURILIB_PROGRESS"] = "0"
# "auto" starts one process for a table, not one per core: the xdist processes already keep the cores busy,
# and each worker process would pay seconds of imports (the end-to-end test runs as a user's: its own count)
os.environ["PURILIB_WORKERS"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
if _worker:  # the cores shared out among the xdist processes (not two threads each on two cores)
    import torch

    from purilib.devices import cpu_cores
    torch.set_num_threads(max(1, cpu_cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# notebook -> the test module whose results it reads (its nbval run then recomputes nothing)
RUNS_AFTER = {"notebooks/nft_table1.ipynb": "tests/test_reproduce.py",
              "notebooks/nft_table1_imagenet.ipynb": "tests/test_image_sizes.py"}


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's, where it runs the suite
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: the cores this process may use (a container's share, not the host's count)."""
    from purilib.devices import cpu_cores
    return cpu_cores()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's --dist loadfile (one test file or notebook whole in one process), with RUNS_AFTER's
    notebooks joined to their test modules.  (Its xdist_group marks do not group under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return RUNS_AFTER.get(path, path)
    return ByFile(config, log)


def pytest_sessionfinish(session, exitstatus):
    """Leave nothing behind in the temporary folder (PURILIB_KEEP_TEST_OUTPUT=1 keeps it, to look at);
    the controlling process removes it, once every xdist process is done."""
    if not _worker and not os.environ.get("PURILIB_KEEP_TEST_OUTPUT"):
        shutil.rmtree(_scratch, ignore_errors=True)
