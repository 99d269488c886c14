"""Progress bars for long work: plain-text tqdm (readable in a terminal and in an
executed notebook alike), refreshed at most every few seconds so a saved
notebook stays small.  ``PURILIB_PROGRESS=0`` turns them off."""
import os

from tqdm.std import tqdm


def progress(iterable=None, enabled=True, **kwargs):
    kwargs.setdefault("mininterval", 5.0)
    kwargs["disable"] = not enabled or os.environ.get("PURILIB_PROGRESS", "1") == "0"
    return tqdm(iterable, **kwargs)
