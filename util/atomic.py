"""Files replaced whole: a kill or crash while writing leaves the previous file, never half of one."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary path)`` beside ``path``, flushed to disk, then renamed over ``path``.

    os.replace is atomic on POSIX and Windows, so readers see the old file or the new one. The new file
    gets the permissions a plain ``open()`` would give (mkstemp makes it private), and the rename itself
    is made durable by syncing the folder. Missing parent folders are created.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync(directory, os.O_RDONLY)


def _fsync(path: str, flags: int) -> None:
    """Flush ``path`` to disk (a no-op where it cannot be opened, such as folders on some systems)."""
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
