"""Progress bars for long work: plain-text tqdm (readable in a terminal and in an
executed notebook alike), shown only for work that lasts more than 10 s and
refreshed at most every 10 s, so that a saved notebook stays small.
``PURILIB_PROGRESS=0`` turns them off."""
import os

from tqdm.std import tqdm


def progress(iterable=None, enabled=True, **kwargs):
    kwargs.setdefault("mininterval", 10.0)
    kwargs.setdefault("delay", 10.0)  # short loops (a smoke cell) print nothing
    kwargs["disable"] = not enabled or os.environ.get("PURILIB_PROGRESS", "1") == "0"
    return tqdm(iterable, **kwargs)
