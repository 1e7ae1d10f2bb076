"""Real process managers for the backend tests: a supervisord of the test's own, and the systemd
of a booted nspawn container (tests/sysroot.py). Each is stopped by its own PID, nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SUPERVISORD_CONF = """\
[unix_http_server]
file={base}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={base}/supervisord.log
pidfile={base}/supervisord.pid
childlogdir={base}
user=root

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[include]
files = {base}/conf.d/*.conf
"""


class Supervisord:
    def __init__(self, base: str):
        self.base = base
        self.socket = os.path.join(base, "supervisor.sock")
        self.conf_d = os.path.join(base, "conf.d")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Supervisord":
        os.makedirs(self.conf_d, exist_ok=True)
        conf = os.path.join(self.base, "supervisord.conf")
        with open(conf, "w") as fh:
            fh.write(SUPERVISORD_CONF.format(base=self.base))
        self.out = open(os.path.join(self.base, "supervisord.out"), "ab")
        # supervisord's environment is root's: the servers must not see it (tests check that)
        env = {"PATH": "/usr/bin:/bin", "SUPERVISOR_TEST_SECRET": "root-only", "HOME": "/root"}
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", conf], env=env,
                                     stdout=self.out, stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"supervisord did not start: {open(os.path.join(self.base, 'supervisord.out')).read()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
