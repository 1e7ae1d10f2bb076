"""Small file-system helpers that get ownership and modes right the first time."""

import os
import struct
import tempfile


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


# struct posix_acl_xattr_header / _entry (linux/posix_acl_xattr.h): version 2, then (tag, perm, id)
_ACL_VERSION, _USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 2, 0x01, 0x02, 0x04, 0x10, 0x20
_NO_ID = 0xFFFFFFFF


def grant_only(fd: int, uid: int, perm: int) -> None:
    """A POSIX ACL on the open file or dir `fd`: its owner keeps the owner's bits, `uid` gets `perm`,
    the group and others nothing (the mask, `perm`, is what `ls -l` shows as the group's bits)."""
    owner = (os.fstat(fd).st_mode >> 6) & 0o7
    entries = [(_USER_OBJ, owner, _NO_ID), (_USER, perm, uid), (_GROUP_OBJ, 0, _NO_ID), (_MASK, perm, _NO_ID),
               (_OTHER, 0, _NO_ID)]
    acl = struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(fd, "system.posix_acl_access", acl)
