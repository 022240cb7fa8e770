"""One kpod process at a time in a run folder: an OS file lock, held while a command writes there.

The lock is `fcntl.flock` on `<run>/.kpod.lock`, which names its holder (pid, command, since when). The
OS releases it when the holder exits, killed or not, so a lock left by a dead process is simply taken.
Nested use in one process is free (full_pipeline runs stages that lock too). Under `accelerate launch`
or `torchrun` the processes of one launch work in the folder together: rank 0 holds the lock for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from kpod.files import DataError

LOCK_FILE = ".kpod.lock"
_held: dict[Path, int] = {}  # this process's locks and how deeply each is nested


class RunFolderBusy(DataError):
    """Another process holds the run folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} since {info['since']}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not written its name yet"


@contextlib.contextmanager
def run_folder_lock(root: str | Path, wait_s: float = 0.0):
    """Hold the run folder's lock; if another process holds it, wait up to `wait_s` seconds, then refuse."""
    root = Path(root).resolve()
    if root in _held or int(os.environ.get("RANK", "0")) != 0:
        _held[root] = _held.get(root, 0) + 1
        try:
            yield
        finally:
            _held[root] -= 1
            if not _held[root]:
                del _held[root]
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise RunFolderBusy(
                    f"{root}: another kpod process works in this run folder ({_holder(path)}); wait until it "
                    "ends, or give this command another --output-dir"
                ) from None
            time.sleep(0.5)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since, "command": " ".join(sys.argv)}).encode(), 0)
    _held[root] = 1
    try:
        yield
    finally:
        _held.pop(root, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
