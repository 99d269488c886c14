"""End to end: ./reproduce.sh runs the table notebook through papermill (smoke profile)."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from purilib.tables import get_table

ROOT = Path(__file__).resolve().parents[1]


def reproduce(*args, results, env_extra=None):
    env = {**os.environ, "PURILIB_PYTHON": sys.executable, "PURILIB_RESULTS_DIR": str(results), **(env_extra or {})}
    return subprocess.run([str(ROOT / "reproduce.sh"), *args], capture_output=True, text=True, env=env, timeout=3600)  # alone (no models cached) the grid takes ~5 min on 2 cores


def test_smoke_table_end_to_end():
    """The full 15-row x 8-column NFT Table 1 grid on the smoke profile.  Results go to the session's
    results folder (conftest.py), where nbval's run of the same notebook then finds every cell done; the
    backdoored models come from the session's cache, where the per-attack tests left them."""
    results = Path(os.environ["PURILIB_RESULTS_DIR"])
    run = reproduce("nft-table1", "--profile", "smoke", results=results, env_extra={"PURILIB_WORKERS": ""})  # "auto": 2
    assert run.returncode == 0, run.stderr[-3000:]
    out = results / "nft-table1" / "smoke"
    table = pd.read_csv(out / "table.csv")
    grid = get_table("nft-table1")
    assert list(dict.fromkeys(table["attack"])) == list(grid.attacks)  # the paper's row order
    assert set(table["defense"]) == set(grid.defenses) and len(table) == 15 * 8
    assert len(list((out / "records").glob("*.json"))) == 15 * 8
    published = table[table.defense.isin(["No defense", "NFT"])]  # the paper's Table 1 has no FT column
    assert published["paper_acc"].notna().all() and table[table.defense == "FT"]["paper_acc"].isna().all()
    assert (out / "nft_table1.ipynb").exists() and (out / "asr_acc.png").exists()
    assert "ASR paper" in (out / "table.md").read_text()
    # smoke numbers check the plumbing, not the papers: every all-to-one backdoor is learned (a benign
    # smoke model sends ~1% of the triggered images to the target).  The all-to-all variants (Troj-all,
    # Dyn-all) are not learned within the smoke budget (results/attacks/smoke_calibration.md); their label
    # maps are unit-tested instead.
    planted = table[(table.defense == "No defense") & ~table.attack.isin(["Benign", "Troj-all", "Dyn-all"])]
    planted = planted.set_index("attack")["asr"]
    assert (planted > 12).all(), planted[planted <= 12]


def test_list_names_tables_and_profiles(tmp_path):
    run = reproduce("--list", results=tmp_path)
    assert run.returncode == 0 and "nft-table1" in run.stdout and "cpu" in run.stdout


def test_the_list_and_a_refused_request_answer_without_importing_torch():
    """Importing torch takes seconds: the list and the one-line refusals of bad names come before it."""
    code = ("import sys\nfrom purilib.cli import main\n"
            "assert main(['list']) == 0 and main(['run', 'nft-table1', '--attacks', 'BadNet']) == 2\n"
            "assert main(['run', 'nft-table1-imagenet', '--profile', 'gpu', '--seeds', '0']) == 2\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip().endswith("[]"), run.stdout[-500:] + run.stderr[-2000:]
    assert "did you mean 'BadNets'" in run.stderr and "seeds must be a positive integer" in run.stderr


def _tiny_tarball(path, truncate=False):
    """A cifar10/{train,test}/<class>/ image tree of 2 PNGs per class, gzipped (truncated if asked)."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for split in ("train", "test"):
            for c, name in enumerate(("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                      "ship", "truck")):
                for i in range(2):
                    png = io.BytesIO()
                    Image.fromarray(np.random.default_rng(c * 10 + i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(png, "PNG")
                    info = tarfile.TarInfo(f"cifar10/{split}/{name}/{i}.png")
                    info.size = len(png.getvalue())
                    tar.addfile(info, io.BytesIO(png.getvalue()))
    blob = buffer.getvalue()
    path.write_bytes(blob[:len(blob) // 2] if truncate else blob)


@pytest.mark.parametrize("args, message", [
    (["table99"], "unknown table"),
    (["nft-table1", "--profile", "huge"], "unknown profile"),
    (["nft-table1", "--profile"], "--profile needs a value"),
    (["nft-table1", "--profile", "--seeds", "2"], "--profile needs a value"),
    (["nft-table1", "--seeds", "zero"], "positive integer"),
    (["nft-table1", "--device", "tpu"], "device"),
    (["nft-table1", "--device", "cuda:99"], "cuda"),
    (["nft-table1", "--attacks", "BadNetz"], "did you mean 'BadNets'"),
    (["nft-table1", "--defenses", "NTF"], "did you mean 'NFT'"),
    (["nft-table1", "--defenses", "FIP"], "nft-table1 has no column .defense. 'FIP'"),
    (["nft-table1", "--clean-per-class", "100000"], r"must be in 1\.\.10"),
    (["nft-table1", "--model", "resnet50"], "takes 224x224 images"),
    (["nft-table1", "--profile", "cpu", "--data-root", "{tmp}/none"], "CIFAR-10 not found"),
    (["nft-table1", "--profile", "cpu", "--data-root", "{tmp}/cut"], "cifar10.tar.gz' could not be read"),
])
def test_bad_requests_fail_with_one_clear_line(tmp_path, args, message):
    """Each refused before a kernel starts: exit status 2, one line naming the fix, nothing written."""
    import re
    (tmp_path / "cut").mkdir()
    _tiny_tarball(tmp_path / "cut" / "cifar10.tar.gz", truncate=True)
    results = tmp_path / "results"
    run = reproduce(*[a.replace("{tmp}", str(tmp_path)) for a in args], results=results,
                    env_extra={"PURILIB_CACHE_DIR": str(tmp_path / "cache")})
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), run.stderr
    assert not results.exists() or not any(results.rglob("*"))


def test_names_are_trimmed_and_a_readable_archive_passes(tmp_path):
    (tmp_path / "data").mkdir()
    _tiny_tarball(tmp_path / "data" / "cifar10.tar.gz")
    check = subprocess.run([sys.executable, "-m", "purilib.cli", "check", "nft-table1", "cpu", "--data-root",
                            str(tmp_path / "data"), "--attacks", " BadNets,  Blend ", "--defenses", "No defense, NFT"],
                           capture_output=True, text=True, env={**os.environ, "PURILIB_CACHE_DIR": str(tmp_path)})
    assert check.returncode == 0, check.stderr
    assert check.stdout.split("\t")[2:] == ['["BadNets", "Blend"]', '["No defense", "NFT"]\n']


def test_a_failed_run_keeps_the_last_good_notebook(tmp_path):
    out = tmp_path / "results" / "nft-table1" / "smoke"
    out.mkdir(parents=True)
    (out / "nft_table1.ipynb").write_text("the last good record")
    # no records to tabulate: the notebook fails inside the kernel
    run = reproduce("nft-table1", "--attacks", "BadNets", "--from-records", results=tmp_path / "results")
    assert run.returncode != 0 and "FAILED" in run.stderr
    assert (out / "nft_table1.ipynb").read_text() == "the last good record"
    assert (out / "nft_table1.failed.ipynb").exists() and not list(out.glob(".*running*"))


def test_killing_reproduce_stops_papermill_and_its_kernel(tmp_path):
    import signal
    import time
    marker = tmp_path / "results"
    env = {**os.environ, "PURILIB_PYTHON": sys.executable, "PURILIB_RESULTS_DIR": str(marker),
           "PURILIB_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([str(ROOT / "reproduce.sh"), "nft-table1", "--attacks", "BadNets"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running():
        found = subprocess.run(["pgrep", "-f", f"papermill.*{marker}"], capture_output=True, text=True).stdout
        return found.split()
    deadline = time.time() + 120
    while not running() and time.time() < deadline:
        time.sleep(0.5)
    assert running(), "papermill never started"
    time.sleep(5)  # the kernel is up
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    time.sleep(3)
    assert not running()
    def environment(pid):
        try:
            return open(f"/proc/{pid}/environ", "rb").read().decode(errors="ignore")
        except OSError:  # gone meanwhile
            return ""
    kernels = subprocess.run(["pgrep", "-f", "ipykernel"], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in kernels if str(marker) in environment(pid)]
    out = marker / "nft-table1" / "smoke"  # the interrupted run's notebook beside the record, not over it
    assert (out / "nft_table1.failed.ipynb").exists() and not list(out.glob(".*running*"))
