"""Reading and writing kpod's files: JSON and JSONL, written atomically, and the one error a bad file
gives (DataError, naming the file, the line where there is one, and what to do)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file (and line)."""


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_json(path: Path, remedy: str | None = None, keys: tuple[str, ...] = ()):
    """A JSON file, or a DataError naming the file (and what to do, `remedy`) when it is missing, not
    UTF-8, not JSON, or (a run-folder file) lacks one of `keys`."""
    path = Path(path)
    then = f"; {remedy}" if remedy else ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found{then}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: damaged (not UTF-8 text at byte {exc.start}){then}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: damaged (malformed JSON at line {exc.lineno}: {exc.msg}){then}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"{path}: not a file kpod wrote here (no {', '.join(missing)}){then}")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: a folder shared with a group stays readable


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file. A folder that cannot
    be written (read-only, full disk) is a DataError naming the file; the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise DataError(f"{path}: cannot write it ({exc.strerror or exc}); {_remedy(exc)}") from None


def _remedy(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the disk is full: free space, then rerun the same command"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the folder is not writable: fix its permissions or choose another --output-dir"
    return "check the folder, then rerun the same command"


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
