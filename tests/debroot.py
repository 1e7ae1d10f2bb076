"""A clean Debian 12 root for the package install test: systemd, apt, and the .debs of notebookd's
dependencies downloaded (not installed), so that inside the booted container, where there is no network,
`apt-get install ./notebookd.deb` resolves and installs the real Debian dependencies itself.

Built once with debootstrap and cached beside the systemd test root (see sysroot.py).
"""

from __future__ import annotations

import os
import subprocess

from sysroot import MIRROR, cached_root

BASE = "systemd,systemd-sysv,dbus,procps,apt,ca-certificates"
# Depends and Recommends of packaging/debian/control: downloaded into the root's apt cache
DOWNLOAD = ["python3-jupyter-server", "python3-psutil", "python3-sdnotify", "python3-yaml", "python3-cryptography",
            "python3-ipykernel", "python3-nbclassic", "python3-pamela"]
RECIPE = f"bookworm-debroot-{BASE.replace(',', '+')}-{'+'.join(DOWNLOAD)}-1"


def _download(tmp: str) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    with open(os.path.join(tmp, "etc/apt/sources.list"), "w") as fh:
        fh.write(f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n"
                 "deb http://deb.debian.org/debian-security bookworm-security main\n")
    subprocess.run(["chroot", tmp, "apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["chroot", tmp, "apt-get", "install", "-y", "-q", "--download-only", *DOWNLOAD],
                   check=True, env=env, capture_output=True)


def root() -> str:
    return cached_root(RECIPE, BASE, _download, mask=("getty@tty1.service", "console-getty.service",
                                                      "apt-daily.timer", "apt-daily-upgrade.timer"))


if __name__ == "__main__":
    print(root())
