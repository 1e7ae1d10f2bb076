"""Small file-system helpers that get ownership and modes right the first time."""

import os
import tempfile


def remove(path: str) -> None:
    """Unlink `path` if it is there (gone already is just as good)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def ensure_dir(path: str, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Create `path` if needed and force its mode and owner (a pre-existing dir is corrected too)."""
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)


def write_atomic(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Replace `path` with `data`; the file has its final owner and mode before it gets its name,
    so there is no moment when a secret sits in a file with the wrong permissions."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        os.unlink(tmp)
        raise
