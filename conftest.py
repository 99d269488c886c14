"""Test-wide settings: results and caches go to a temporary folder, never into the
checkout or the user's cache (even when PURILIB_CACHE_DIR / PURILIB_RESULTS_DIR are set); progress bars off.  Set here (before any test or
nbval kernel starts) so that notebooks executed by nbval inherit them."""
import os
import shutil
import tempfile

_scratch = tempfile.mkdtemp(prefix="purilib-tests-")
# whatever the user's PURILIB_* say: the suite trusts no model it did not train itself (a cached model made
# with other thread counts is other weights), and writes nothing where the user keeps results
os.environ["PURILIB_RESULTS_DIR"] = os.path.join(_scratch, "results")
os.environ["PURILIB_CACHE_DIR"] = os.path.join(_scratch, "cache")
os.environ["PURILIB_PROGRESS"] = "0"
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_sessionfinish(session, exitstatus):
    """Leave nothing behind in the temporary folder (PURILIB_KEEP_TEST_OUTPUT=1 keeps it, to look at)."""
    if not os.environ.get("PURILIB_KEEP_TEST_OUTPUT"):
        shutil.rmtree(_scratch, ignore_errors=True)
