"""Errors that reach the user as one line and an exit code, never as a traceback; and where a file stops being
UTF-8 text, for the errors that say so (config and data files alike)."""

from __future__ import annotations

import codecs
from pathlib import Path


class UserError(Exception):
    """A mistake the user can fix (bad config, missing file, bad data). The CLI prints it and exits 2."""

    exit_code = 2


class HubUnreachableError(UserError):
    """A model or dataset had to come from the Hugging Face Hub, and the Hub could not be reached."""


def first_bad_utf8(path: str | Path) -> str:
    """Where the file's first byte that is not UTF-8 lies, counted from the file's start: the reader's own error
    counts within the chunk it was decoding (a bad byte 70,000 bytes in was "at position 4,464")."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1  # offset: bytes before this chunk
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            held = len(decoder.getstate()[0])  # the last chunk's unfinished character, decoded with this one
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                at = exc.start - held  # within this chunk (negative: in the bytes held from the last one)
                line += chunk[:max(at, 0)].count(b"\n")
                return f"bad byte at byte {offset + at:,}, line {line:,}"
            if not chunk:
                return "a bad byte"  # only the reader saw it (e.g. in a part it decodes otherwise)
            offset, line = offset + len(chunk), line + chunk.count(b"\n")
