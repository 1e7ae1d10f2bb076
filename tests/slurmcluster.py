"""A Slurm cluster of the test's own: Debian's munged, slurmctld and slurmd (22.05), no systemd.

Everything lives under one base directory: munge's key, socket and log (munged runs as the munge user, as
on a real node), slurm.conf with ports of its own (never the default 6817/6818, so a real cluster on the
machine is left alone), the state and spool directories. Each daemon is stopped by its own pid, nothing else.

One node (`localhost`, 127.0.0.1, the machine's CPUs), or two: Debian's slurmd runs several times on one
machine with `-N NAME` (each node with its own Port= and spool), so `n1` and `n2` get one CPU each and
jobs really land on two nodes. Their NodeAddr are 127.0.0.1 and 127.0.0.2 (`address()`): loopback only, as
every network test here, yet distinct, so a server reached at the wrong node's address is refused.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time

from conftest import free_ports

SLURM_CONF = """\
ClusterName=nbt
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool-%n
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd-%n.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=lab Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""
NODE = "NodeName={name} NodeHostname=localhost NodeAddr={addr} Port={port} CPUs={cpus} RealMemory={memory}"


def _node_size() -> tuple[int, int]:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"\bCPUs=(\d+)", out).group(1))
    memory = int(re.search(r"\bRealMemory=(\d+)", out).group(1))
    return cpus, memory


class Cluster:
    def __init__(self, base: str, nodes: int = 1):
        self.base = base
        self.node_names = ["localhost"] if nodes == 1 else [f"n{i + 1}" for i in range(nodes)]
        self.conf = os.path.join(base, "slurm.conf")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": self.conf, "LANG": "C.UTF-8"}
        self.procs: list[subprocess.Popen] = []
        self.cpus, self.memory = _node_size()

    def start(self) -> "Cluster":
        munge = pwd.getpwnam("munge")
        mdir = os.path.join(self.base, "munge")
        os.makedirs(mdir, mode=0o700)
        os.chown(mdir, munge.pw_uid, munge.pw_gid)
        key = os.path.join(mdir, "munge.key")
        with open(key, "wb") as fh:
            fh.write(os.urandom(128))
        os.chmod(key, 0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        # the socket's directory must be searchable by everyone: users' sbatch talks to munged too
        os.chmod(mdir, 0o755)
        self._run(["munged", "-F", "--force", f"--key-file={key}", f"--socket={mdir}/munge.socket",
                   f"--pid-file={mdir}/munged.pid", f"--log-file={mdir}/munged.log",
                   f"--seed-file={mdir}/munged.seed"], user=munge.pw_uid, group=munge.pw_gid, name="munged")
        self._wait(lambda: os.path.exists(f"{mdir}/munge.socket"), "munged's socket")
        os.makedirs(os.path.join(self.base, "state"), mode=0o755)
        ctld, *ports = free_ports(1 + len(self.node_names), 26000)
        cpus, memory = (self.cpus, self.memory) if len(self.node_names) == 1 else (1, self.memory // 4)
        nodes = [NODE.format(name=n, addr=self.address(n), port=p, cpus=cpus, memory=memory)
                 for n, p in zip(self.node_names, ports)]
        with open(self.conf, "w") as fh:
            fh.write(SLURM_CONF.format(base=self.base, ctld_port=ctld, nodes="\n".join(nodes),
                                       names=",".join(self.node_names)))
        os.chmod(self.conf, 0o644)
        self._run(["slurmctld", "-D", "-i", "-f", self.conf], name="slurmctld")
        self._wait(lambda: self.scontrol("ping").returncode == 0 and "UP" in self.scontrol("ping").stdout,
                   "slurmctld answering")
        for name in self.node_names:
            self._run(["slurmd", "-D", "-N", name, "-f", self.conf], name=f"slurmd-{name}")
        self._wait(lambda: self.node_states() == ["IDLE"] * len(self.node_names), "every node idle")
        return self

    def address(self, node: str) -> str:
        """n1 is 127.0.0.1, n2 127.0.0.2 …: loopback addresses (lo carries all of 127.0.0.0/8), distinct so
        that a server reached at the wrong node's address is refused."""
        return "127.0.0.1" if node == "localhost" else f"127.0.0.{self.node_names.index(node) + 1}"

    def _run(self, argv, name, **kw) -> None:
        out = open(os.path.join(self.base, f"{name}.out"), "ab")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                                           start_new_session=True, **kw))
        out.close()

    def _wait(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) while waiting for {what}: "
                                       + self.logs())
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout}s: " + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        text = []
        names = ["slurmctld.log", "munge/munged.log", "slurmctld.out"]
        names += [f"slurmd-{n}.{ext}" for n in self.node_names for ext in ("log", "out")]
        for name in names:
            path = os.path.join(self.base, name)
            if os.path.exists(path):
                text.append(f"--- {name}\n" + open(path, errors="replace").read()[-3000:])
        return "\n".join(text)

    def command(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)

    def scontrol(self, *args: str) -> subprocess.CompletedProcess:
        return self.command("scontrol", *args)

    def node_states(self) -> list[str]:
        return self.command("sinfo", "-h", "-N", "-o", "%T").stdout.upper().split()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones until MinJobAge), from squeue."""
        out = self.command("squeue", "-h", "-a", "--states=all", "-o", "%i|%j|%u|%T|%r|%N").stdout
        keys = ("id", "name", "user", "state", "reason", "nodes")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line]

    def stop(self) -> None:
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
