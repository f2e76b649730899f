"""What a person at a terminal sees while a long step runs: 'doing X' lines and progress bars, on stderr.

Both appear only when stderr is a terminal: piped or redirected output (logs, CI, scripts) stays as it was, and a
refused command still prints exactly one line (exit 2).
"""

from __future__ import annotations

import os
import sys


def on_terminal() -> bool:
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def say(message: str) -> None:
    """One short line saying what a step that may take a while is doing (loading a model, tokenizing a file)."""
    if on_terminal():
        print(f"lorafit: {message}", file=sys.stderr, flush=True)


def progress_bar(total: int, what: str):
    """A tqdm bar over `total` rows: rows done, rows per second, time left; a no-op off a terminal."""
    from tqdm import tqdm  # a transformers dependency

    shown = on_terminal()
    try:
        width = os.get_terminal_size(sys.stderr.fileno()).columns if shown else 0
    except (OSError, ValueError):
        width = 0
    # a terminal that reports no size (a container's tty before it is resized) gets no bar at all from tqdm
    size = {"dynamic_ncols": True} if width else {"ncols": 100, "nrows": 24}
    return tqdm(total=total, desc=f"lorafit: {what}", unit=" rows", file=sys.stderr, disable=not shown, **size)
