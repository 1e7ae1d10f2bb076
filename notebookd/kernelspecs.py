"""Shared kernels (`kernels:`): kernelspecs every server offers, kept out of users' homes.

They are written to `<run_dir>/share/kernels/NAME/kernel.json` (root-owned, world-readable, no
secrets) and every server gets that `share` dir first in `JUPYTER_PATH`. Jupyter reads kernelspecs
when it lists or starts kernels, so a reload that changes them needs no server restart.
"""

from __future__ import annotations

import json
import os
import shutil

from notebookd.config import Kernel
from notebookd.fsutil import ensure_dir, write_atomic


def share_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "share")


def kernel_json(kernel: Kernel) -> dict:
    spec = {"argv": list(kernel.argv), "display_name": kernel.display_name, "language": kernel.language,
            "metadata": {"notebookd": True}}
    if kernel.env:
        spec["env"] = dict(kernel.env)
    return spec


def install(run_dir: str, kernels: tuple[Kernel, ...]) -> None:
    """Make `<run_dir>/share/kernels` hold exactly `kernels`."""
    root = os.path.join(share_dir(run_dir), "kernels")
    ensure_dir(share_dir(run_dir), 0o755)
    ensure_dir(root, 0o755)
    wanted = {k.name: k for k in kernels}
    for name in os.listdir(root):
        if name not in wanted:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name, kernel in wanted.items():
        ensure_dir(os.path.join(root, name), 0o755)
        write_atomic(os.path.join(root, name, "kernel.json"),
                     json.dumps(kernel_json(kernel), indent=1).encode(), 0o644)
