"""A Debian 12 root with systemd, booted with systemd-nspawn, for the real-systemd tests.

The root is built once with debootstrap (about 75 s) and cached under CACHE; every boot uses
`--volatile=overlay`, so a test run never changes the cached root. The host drives the container's
systemd with `nsenter -t PID1 -a systemctl ...`.

Run as a script to build the cache ahead of time: `python tests/sysroot.py`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time

CACHE = os.environ.get("NOTEBOOKD_TEST_CACHE", "/var/cache/notebookd-tests")
# Change RECIPE and the cache is rebuilt (it names the directory).
PACKAGES = "systemd,systemd-sysv,dbus,procps,python3,passwd"
RECIPE = f"bookworm-minbase-{PACKAGES.replace(',', '+')}-1"
MIRROR = "http://deb.debian.org/debian"


def cached_root(recipe: str, packages: str, finish=lambda tmp: None,
                mask: tuple[str, ...] = ("getty@tty1.service", "console-getty.service")) -> str:
    """A debootstrapped bookworm root named by `recipe`, built once (`finish(tmp)` adds to it) and
    kept under CACHE; safe against two builders at once (a lock file)."""
    path = os.path.join(CACHE, recipe)
    if os.path.exists(os.path.join(path, ".complete")):
        return path
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(path, ".complete")):
            return path
        tmp = path + ".building"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", tmp, MIRROR],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finish(tmp)
        # no getty (or apt timers) in a test container: boots stay quick and quiet
        for unit in mask:
            subprocess.run(["systemctl", f"--root={tmp}", "mask", unit], capture_output=True)
        with open(os.path.join(tmp, ".complete"), "w"):
            pass
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    return path


def root() -> str:
    """The root the systemd-backend tests boot."""
    return cached_root(RECIPE, PACKAGES)


class Container:
    """One booted container (`--volatile=overlay`: its changes vanish when it stops)."""

    def __init__(self, root_dir: str, binds_ro: list[str], log: str, binds: list[str] = (),
                 syscalls: list[str] = ()):
        self.root_dir, self.binds_ro, self.binds, self.log_path = root_dir, binds_ro, list(binds), log
        # nspawn's own seccomp allowlist, which a machine booted for real does not have, lacks some
        # newer calls (pidfd_getfd in systemd 252): a test that needs one names it here
        self.syscalls = list(syscalls)
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, timeout: float = 90) -> "Container":
        args = ["systemd-nspawn", "-D", self.root_dir, "--boot", "--register=no", "--keep-unit",
                "--volatile=overlay", "--private-network", "-q", f"--machine=nbt-{os.getpid()}-{id(self) % 10000}"]
        args += [f"--bind-ro={b}" for b in self.binds_ro] + [f"--bind={b}" for b in self.binds]
        if self.syscalls:
            args.append("--system-call-filter=" + " ".join(self.syscalls))
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}: {self.tail()}")
            self.leader = self._leader()
            if self.leader and os.path.exists(f"/proc/{self.leader}/root/run/systemd/private"):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"container did not come up in {timeout}s: {self.tail()}")
        # wait until boot is done, so units started by tests do not race the boot transaction
        self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
        return self

    def _leader(self) -> int:
        """The container's pid 1 (systemd), seen from the host: the child of systemd-nspawn."""
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as fh:
                kids = fh.read().split()
        except FileNotFoundError:
            return 0
        return int(kids[0]) if kids else 0

    def run(self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
            ) -> subprocess.CompletedProcess:
        out = subprocess.run(["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True,
                             timeout=timeout, input=input, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                "LANG": "C.UTF-8"})
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} -> {out.returncode}: {out.stderr.strip()}")
        return out

    def path(self, inside: str) -> str:
        """A path inside the running container, as the host can open it."""
        return f"/proc/{self.leader}/root{inside}"

    def tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM to nspawn asks the container's systemd to power off (a clean shutdown)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


if __name__ == "__main__":
    print(root())
    sys.exit(0)
