"""What every result records about where it came from: code version, seeds."""
import functools
import hashlib
import json
import random
import subprocess
from pathlib import Path

import numpy as np
import torch


@functools.lru_cache(maxsize=None)
def code_version(checkout=None) -> str:
    """The git commit of the purilib checkout; with uncommitted changes to the package,
    ``<commit>-dirty-<digest of those changes>`` (new, untracked files of the package included), so
    that two different edits never share a version.  Read once per process (cached), when purilib's
    experiment module is imported: the code a running process executes is the code it imported, even
    if the checkout changes under it."""
    checkout = Path(checkout) if checkout else Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "HEAD", "--", "purilib"],
                               cwd=checkout, capture_output=True, text=True, timeout=10).stdout
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "purilib"],
                                   cwd=checkout, capture_output=True, text=True, timeout=10).stdout.split()
        for name in sorted(untracked):  # a new module is a change too (git diff does not show it)
            dirty += f"\nnew file {name}\n" + (checkout / name).read_text(errors="replace")
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        from . import __version__
        return f"purilib-{__version__}"
    if not dirty:
        return commit[:12]
    return f"{commit[:12]}-dirty-{hashlib.sha256(dirty.encode()).hexdigest()[:8]}"


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
