"""Write files so a reader sees the old file, none, or the whole new one: never half of it."""
from __future__ import annotations

import contextlib
import os
import tempfile


def _mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # what open() would have given; mkstemp gives 0600


def _sync_dir(folder: str) -> None:
    """Make the rename itself durable: after a node crash the new name, not the old, is there."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, _mode())
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
