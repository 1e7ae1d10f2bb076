"""notebookd against supervisord (and plain parallel `jupyter server`), in one run, as root.

    bench/run [--quick] [--n 10,30] [--reps 3] [--only cold,status,logs,scrape,ondemand]

Every compared system runs in the same run, alternately (A B C D, then B C D A, …), and the table
gives medians and ratios, so CPU noise from other work on the machine hits all of them alike.
Scenarios: cold start of N real servers (first/mean/last ready, then PSS per idle server and the
time to stop all); `status` latency and idle daemon cost with 100 users (stub servers); capture
of a large log; on-demand servers (ondemand.py: first request, restarts against supervisord, memory of
idle users). Bench users are created (`nbb<3 letters><i>`) and deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time

from notebookd import config as configmod, desired as desiredmod, launch
from notebookd.access import Access
from notebookd.paths import Layout
from notebookd.probe import http_status
from notebookd.tokens import TokenStore

PY = sys.executable
BIN = os.path.dirname(PY)
HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


# ------------------------------------------------------------------ helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


_handed_out: set[int] = set()  # two setups of one run never get the same port


def free_ports(n: int, start: int) -> list[int]:
    ports, port = [], start + (os.getpid() % 100) * 30
    while len(ports) < n:
        if port in _handed_out:
            port += 1
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
        if port > 39999:
            port = 36000
    _handed_out.update(ports)
    return ports


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def uid_pids(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def kill_users(names: list[str]) -> None:
    for name in names:
        for pid in uid_pids(pwd.getpwnam(name).pw_uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def median(xs):
    return statistics.median(xs) if xs else float("nan")


async def wait_ready(targets: list[tuple[str, int, str]], t0: float, timeout: float) -> list[float]:
    """Seconds from t0 until each (ip, port, base_url) answers GET {base_url}api with 200."""

    async def one(ip, port, base):
        pause = 0.05
        while time.monotonic() - t0 < timeout:
            if await http_status(ip, port, base + "api", timeout=5) == 200:
                return time.monotonic() - t0
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)
        return float("inf")

    return list(await asyncio.gather(*(one(*t) for t in targets)))


def wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return True
        time.sleep(0.02)
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ the systems under test

class Setup:
    """Users, ports and notebookd's specs for one scenario; supervisord and plain runs use the same
    specs (argv, environment, config file, token file) as notebookd computes them."""

    def __init__(self, work: str, users: list[str], tag: str, server: dict, logs: dict | None = None):
        self.dir = os.path.join(work, tag)
        os.makedirs(self.dir, mode=0o755)
        self.users = users
        self.ports = free_ports(len(users), 36000 + random.randrange(0, 3000))
        logs = logs or {}
        self.config = {
            "listen": {"ip": "127.0.0.1", "ports": f"{min(self.ports)}-{max(self.ports)}"},
            "state_dir": os.path.join(self.dir, "state"),
            "logs": {"dir": os.path.join(self.dir, "logs"), **logs},
            "server": server,
            "users": {u: {"port": p} for u, p in zip(users, self.ports)},
        }
        self.config_path = os.path.join(self.dir, "notebookd.yaml")
        with open(self.config_path, "w") as fh:
            json.dump(self.config, fh)  # JSON is YAML
        layout = Layout(system=True, config=self.config_path, config_explicit=True,
                        run_dir=os.path.join(self.dir, "run"), state_dir=self.config["state_dir"],
                        log_dir=self.config["logs"]["dir"])
        self.specs = desiredmod.build(configmod.load(layout), True).specs
        assert len(self.specs) == len(users), desiredmod.build(configmod.load(layout), True).problems

    def targets(self):
        return [(s.ip, s.port, s.base_url) for s in self.specs.values()]

    def server_files(self, name: str) -> launch.Launch:
        """What notebookd prepares for `name`: launch.prepare, the daemon's own path (files under this
        setup's dir, not the daemon's)."""
        state = os.path.join(self.dir, "state")
        return asyncio.run(launch.prepare(self.specs[name], self.dir, Access(state, TokenStore(state))))


class Notebookd:
    def __init__(self, setup: Setup):
        self.setup = setup
        self.env = {**ENV, "NOTEBOOKD_RUN_DIR": os.path.join(setup.dir, "run"),
                    "NOTEBOOKD_CONFIG": setup.config_path}
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.setup.dir, "daemon.log"), "ab")
        self.proc = subprocess.Popen([PY, "-m", "notebookd", "run"], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd="/")

    def server_pids(self) -> list[int]:
        out = subprocess.run([PY, "-m", "notebookd", "status", "--json"], env=self.env, capture_output=True,
                             text=True)
        return [r["pid"] for r in json.loads(out.stdout)["servers"] if r["pid"]]

    def extra_pids(self) -> list[int]:
        """The fork template (its memory is shared with the servers and counted with them)."""
        servers = set(self.server_pids())
        return [p for p in children(self.proc.pid) if p not in servers]

    def status_cmd(self):
        return [os.path.join(BIN, "notebookd"), "status"], self.env  # the installed command

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


class Supervisord:
    def __init__(self, setup: Setup, programs: dict[str, dict] | None = None):
        self.setup = setup
        d = setup.dir
        self.conf = os.path.join(d, "supervisord.conf")
        os.makedirs(os.path.join(d, "svlogs"), exist_ok=True)
        lines = [
            "[unix_http_server]", f"file={d}/supervisor.sock", "",
            "[supervisord]", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid", "nodaemon=true",
            f"childlogdir={d}/svlogs", "",
            "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock", "",
        ]
        for name, spec in setup.specs.items():
            run = setup.server_files(name)
            options = {
                "command": " ".join(_sv_quote(a) for a in run.argv), "user": name, "directory": run.cwd,
                "umask": "077", "environment": ",".join(f'{k}="{_sv_escape(v)}"' for k, v in run.env.items()),
                "autostart": "true", "autorestart": "true", "startsecs": "1", "startretries": "1000",
                "stopasgroup": "true", "killasgroup": "true", "stopwaitsecs": str(int(spec.settings.stop_timeout)),
                "redirect_stderr": "true", "stdout_logfile": f"{d}/svlogs/{name}.log",
                "stdout_logfile_maxbytes": "10MB", "stdout_logfile_backups": "5",
                **(programs or {}).get(name, {}),
            }
            lines += [f"[program:{name}]", *[f"{k}={v}" for k, v in options.items()], ""]
        with open(self.conf, "w") as fh:
            fh.write("\n".join(lines))
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.setup.dir, "supervisord.out"), "ab")
        self.proc = subprocess.Popen([os.path.join(BIN, "supervisord"), "-n", "-c", self.conf], env=ENV,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd="/")

    def server_pids(self) -> list[int]:
        return children(self.proc.pid)

    def extra_pids(self) -> list[int]:
        return []

    def status_cmd(self):
        return [os.path.join(BIN, "supervisorctl"), "-c", self.conf, "status"], ENV

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()


def _sv_quote(word: str) -> str:
    return word if word and all(c.isalnum() or c in "-_=./:,'" for c in word) else '"' + word.replace('"', '\\"') + '"'


def _sv_escape(value: str) -> str:
    return value.replace("%", "%%").replace('"', '\\"')


def spawn_as(spec, argv: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    """`argv` as the spec's user, in its own session, output into `log_path`: a server without notebookd."""
    acc = spec.account
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                user=acc.uid, group=acc.gid, extra_groups=list(acc.groups), umask=0o077,
                                start_new_session=True)


class Plain:
    """`jupyter server` started for every user at once, no supervisor (the lower bound)."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.procs = []

    def start(self):
        todo = []
        for name, spec in self.setup.specs.items():
            run = self.setup.server_files(name)
            todo.append((spec, [*launch.enter(run.cwd), *run.argv], run.env))  # cd as the user, as notebookd
        self.t0 = time.monotonic()
        for spec, argv, env in todo:
            self.procs.append(spawn_as(spec, argv, env, os.path.join(self.setup.dir, f"{spec.name}.log")))

    def server_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def extra_pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(60)


# ------------------------------------------------------------------ scenarios

def cold(work: str, users: list[str], system: str, rep: int, settle: float = 5) -> dict:
    """N servers from nothing to all ready; then PSS per idle server; then stop all."""
    n = len(users)
    server = {"spawn": "fork"} if system == "notebookd fork" else {}
    setup = Setup(work, users, f"cold-{n}-{system.replace(' ', '-')}-{rep}", server)
    runner = {"supervisord": Supervisord, "plain": Plain}.get(system, Notebookd)(setup)
    t0 = time.monotonic()
    runner.start()
    if system == "plain":
        t0 = runner.t0
    ready = asyncio.run(wait_ready(setup.targets(), t0, 600))
    result = {"first": min(ready), "mean": statistics.fmean(ready), "last": max(ready)}
    time.sleep(settle)  # idle: PSS of a server that has started and settled
    pids = runner.server_pids()
    result["pss"] = (sum(map(pss_bytes, pids)) + sum(map(pss_bytes, runner.extra_pids()))) / max(1, len(pids))
    all_pids = [p for name in users for p in uid_pids(pwd.getpwnam(name).pw_uid)]
    t = time.monotonic()
    runner.stop()
    gone = wait_gone(all_pids, 120)
    result["stop"] = time.monotonic() - t if gone else float("inf")
    kill_users(users)
    log(f"cold N={n} {system:15s} first {result['first']:.1f}s mean {result['mean']:.1f}s last "
        f"{result['last']:.1f}s pss {result['pss'] / 2**20:.0f}MiB stop {result['stop']:.2f}s")
    return result


def wait_for_file(path: str, what: str = "", timeout: float = 600) -> None:
    """Wait until `path` exists; a run whose server never comes fails with a line, not a hang."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: gave up after {timeout:g} s waiting for {what or path}")
        time.sleep(0.05)


def install_stub(work: str, source: str = "stub.py") -> str:
    """A stand-in server (bench/stub.py, bench/spew.py) copied where the servers' users can read it,
    named as jupyter_server's console script, so the daemon's kind probe (jupyter.kind_from_probe)
    takes it for a jupyter_server and runs it under its launcher, on the socket it holds: the bench
    measures the daemon, not the server."""
    bindir = os.path.join(work, os.path.splitext(source)[0] + "-bin")
    os.makedirs(bindir, mode=0o755, exist_ok=True)
    stub = os.path.join(bindir, "jupyter-server")
    shutil.copy(os.path.join(HERE, source), stub)
    os.chmod(stub, 0o644)
    return stub


def status_and_idle(work: str, users: list[str], calls: int, idle_seconds: float, settle: float = 3) -> dict:
    """100 configured users, stub servers, both daemons up at once: status latency (A B A B) and
    each daemon's idle CPU and RSS over the same window (notebookd's health checks on, every 30 s)."""
    server = {"command": [PY, "-I", install_stub(work)]}
    nbd = Notebookd(Setup(work, users, "status-notebookd", server))
    sv = Supervisord(Setup(work, users, "status-supervisord", server))
    nbd.start()
    sv.start()
    try:
        for runner in (nbd, sv):
            ready = asyncio.run(wait_ready(runner.setup.targets(), time.monotonic(), 300))
            assert max(ready) < 300, "stub servers did not come up"
        time.sleep(settle)
        lat = {"notebookd": [], "supervisord": []}
        for i in range(calls):
            for name, runner in (("notebookd", nbd), ("supervisord", sv))[:: 1 if i % 2 else -1]:
                cmd, env = runner.status_cmd()
                t = time.perf_counter()
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lat[name].append(time.perf_counter() - t)
                assert out.stdout.count("\n") >= len(users), out.stdout[-500:] + out.stderr
        time.sleep(max(settle, 2.1))  # let the 2 s memory cache of the last status expire; then stay idle
        before = {n: cpu_seconds(r.proc.pid) for n, r in (("notebookd", nbd), ("supervisord", sv))}
        t = time.monotonic()
        time.sleep(idle_seconds)
        span = time.monotonic() - t
        idle = {n: {"cpu": (cpu_seconds(r.proc.pid) - before[n]) / span, "rss": rss_bytes(r.proc.pid)}
                for n, r in (("notebookd", nbd), ("supervisord", sv))}
    finally:
        for runner in (nbd, sv):
            runner.stop()
        kill_users(users)
    result = {"status": {n: median(v) for n, v in lat.items()}, "idle": idle, "idle_seconds": span}
    log(f"status median: notebookd {result['status']['notebookd'] * 1000:.0f} ms, supervisorctl "
        f"{result['status']['supervisord'] * 1000:.0f} ms; idle {idle}")
    return result


def log_capture(work: str, user: str, size: int) -> dict:
    spew = install_stub(work, "spew.py")
    home = pwd.getpwnam(user).pw_dir
    results = {}
    for system in ("file", "notebookd", "supervisord"):
        cpu_file = os.path.join(home, f"spew-{system}.cpu")
        go_file = os.path.join(work, f"go-{system}")
        for path in (cpu_file, cpu_file + ".ready"):
            if os.path.exists(path):
                os.unlink(path)
        argv = [PY, "-I", spew, str(size), cpu_file, go_file]
        if system == "file":
            d = os.path.join(work, "logs-file")
            os.makedirs(d)
            pw = pwd.getpwnam(user)
            with open(os.path.join(d, "out.log"), "wb") as out:
                p = subprocess.Popen(argv, stdout=out, user=pw.pw_uid, group=pw.pw_gid, cwd=home)
                wait_for_file(cpu_file + ".ready")
                t = time.monotonic()
                open(go_file, "w").close()
                wait_for_file(cpu_file)
                wall = time.monotonic() - t
                p.kill()
                p.wait()
            files, capturer = [os.path.join(d, "out.log")], 0.0
        else:
            server = {"command": argv, "start_timeout": "1h"}
            setup = Setup(work, [user], f"logs-{system}", server, {"max_size": "10MiB", "keep": 30})
            if system == "notebookd":
                runner = Notebookd(setup)
                base = os.path.join(setup.dir, "logs", f"{user}.log")
            else:
                runner = Supervisord(setup, {user: {"stdout_logfile_backups": "30"}})
                base = os.path.join(setup.dir, "svlogs", f"{user}.log")
            runner.start()
            wait_for_file(cpu_file + ".ready", f"{system}'s spew server to start")
            time.sleep(1)  # the daemon has settled; the spew waits for the go file
            c0 = cpu_seconds(runner.proc.pid)
            t = time.monotonic()
            open(go_file, "w").close()
            while _total([base] + [f"{base}.{i}" for i in range(1, 31)]) < size:
                time.sleep(0.1)
            wall = time.monotonic() - t
            capturer = cpu_seconds(runner.proc.pid) - c0
            files = [f"{base}.{i}" for i in range(30, 0, -1) if os.path.exists(f"{base}.{i}")] + [base]
            runner.stop()
            kill_users([user])
        with open(cpu_file) as fh:
            writer_cpu, lines, written = fh.read().split()
        check = _check_lines(files, int(lines))
        results[system] = {"capturer_cpu_per_100mb": capturer / (size / 1e8), "writer_cpu": float(writer_cpu),
                           "wall": wall, **check}
        log(f"log capture {system}: {results[system]}")
    return results


def _total(paths):
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p))


def _check_lines(files: list[str], expected: int) -> dict:
    """Lines cut between two files, and lines missing or damaged in the whole sequence."""
    split, seen, bad, tail = 0, set(), 0, b""
    for i, path in enumerate(files):
        with open(path, "rb") as fh:
            data = fh.read()
        if data and i < len(files) - 1 and not data.endswith(b"\n"):
            split += 1
        data = tail + data
        body, _, tail = data.rpartition(b"\n")
        for line in body.split(b"\n") if body else ():
            parts = line.split(b" ")
            if len(parts) == 3 and parts[0] == parts[2] and parts[0].isdigit() \
                    and len(parts[1]) == int(parts[0]) % 150:
                seen.add(int(parts[0]))
            else:
                bad += 1
    if tail:
        bad += 1
    return {"split": split, "lost": expected - len(seen & set(range(expected))), "bad": bad}


# ------------------------------------------------------------------ users, table, main

def make_users(n: int) -> list[str]:
    prefix = "nbb" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    names = [f"{prefix}{i}" for i in range(n)]
    for name in names:
        _user_tool(["useradd", "--create-home", "--shell", "/bin/bash", name])
    return names


def _user_tool(argv: list[str], timeout: float = 120) -> None:
    """useradd/userdel, again while another program (a test run beside the bench) holds /etc/passwd's lock."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr or time.monotonic() > deadline:
            raise SystemExit(f"bench: {' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
        time.sleep(0.2)


def delete_users(names: list[str]) -> None:
    for name in names:
        try:
            kill_users([name])
        except KeyError:
            continue
        try:
            _user_tool(["userdel", "--remove", "--force", name])
        except SystemExit as exc:
            log(str(exc))  # the rest are still deleted


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")) / 2**20
    import jupyter_server

    sv = "not installed"
    if os.path.exists(os.path.join(BIN, "supervisord")):
        sv = subprocess.run([os.path.join(BIN, "supervisord"), "--version"], capture_output=True,
                            text=True).stdout.strip()
    return (f"{platform.platform()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}, jupyter_server {jupyter_server.__version__}, supervisor {sv}, "
            f"load average at start {os.getloadavg()[0]:.2f}")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def table(res: dict, args) -> str:
    out = []
    for n, runs in sorted(res.get("cold", {}).items()):
        sv = "supervisord" if "supervisord" in runs else next(iter(runs))  # the smoke run may lack it
        out += [f"\n### Cold start, N = {n} ({len(runs[sv])} run(s) each, median; ratio = last ready / {sv}'s)\n",
                "| system | first ready | mean ready | last ready | ratio | stop all | ratio | PSS per idle server |",
                "|---|---|---|---|---|---|---|---|"]
        base = {k: median([r[k] for r in runs[sv]]) for k in ("last", "stop", "pss")}
        for system, rs in runs.items():
            m = {k: median([r[k] for r in rs]) for k in ("first", "mean", "last", "stop", "pss")}
            stop = "-" if system == "plain" else f"{m['stop']:.2f} s"
            stop_ratio = "-" if system == "plain" else f"{m['stop'] / base['stop']:.2f}x"
            out.append(f"| {system} | {m['first']:.1f} s | {m['mean']:.1f} s | {m['last']:.1f} s | "
                       f"{m['last'] / base['last']:.2f}x | {stop} | {stop_ratio} | {m['pss'] / 2**20:.1f} MiB |")
    if "status" in res:
        s = res["status"]
        out += [f"\n### {args.status_users} users (stub servers), both daemons up together\n",
                "| | notebookd | supervisord | ratio |", "|---|---|---|---|",
                f"| status, median of {args.status_calls} (CLI wall time) | {s['status']['notebookd'] * 1000:.0f} ms | "
                f"{s['status']['supervisord'] * 1000:.0f} ms | "
                f"{s['status']['notebookd'] / s['status']['supervisord']:.2f}x |"]
        i = s["idle"]
        out += [f"| idle RSS | {i['notebookd']['rss'] / 2**20:.1f} MiB | {i['supervisord']['rss'] / 2**20:.1f} MiB | "
                f"{i['notebookd']['rss'] / i['supervisord']['rss']:.2f}x |",
                f"| idle CPU over {s['idle_seconds']:.0f} s (% of one core) | {i['notebookd']['cpu'] * 100:.2f} % | "
                f"{i['supervisord']['cpu'] * 100:.2f} % | - |"]
    if "logs" in res:
        lg = res["logs"]
        f = lg["file"]
        out += [f"\n### Log capture, {args.log_mb} MB of lines from one server (rotation at 10 MiB)\n",
                "| | capturer CPU per 100 MB | writer + capturer CPU vs `> file` | wall | lines split | lost | damaged |",
                "|---|---|---|---|---|---|---|"]
        for system in ("file", "notebookd", "supervisord"):
            r = lg[system]
            total = (r["writer_cpu"] + r["capturer_cpu_per_100mb"] * args.log_mb * 1e6 / 1e8) / f["writer_cpu"]
            name = "`> file`" if system == "file" else system
            out.append(f"| {name} | {r['capturer_cpu_per_100mb']:.3f} s | {total:.2f}x | {r['wall']:.1f} s | "
                       f"{r['split']} | {r['lost']} | {r['bad']} |")
    out += ["\n### Targets\n", "| target | figure | |", "|---|---|---|"]
    cold_runs = res.get("cold", {})
    sv = "supervisord"
    if cold_runs and sv in cold_runs[max(cold_runs)]:
        n = max(cold_runs)
        runs = cold_runs[n]
        last = {k: median([r["last"] for r in v]) for k, v in runs.items()}
        stop = {k: median([r["stop"] for r in v]) for k, v in runs.items()}
        pss = {k: median([r["pss"] for r in v]) for k, v in runs.items()}
        first = median([r["first"] for k in ("notebookd exec", "notebookd fork") if k in runs for r in runs[k]])
        if "notebookd exec" in runs:
            x = last["notebookd exec"] / last[sv]
            out.append(f"| N={n} all ready, exec ≤ 1.05× supervisord | {x:.2f}x | {verdict(x <= 1.05)} |")
        if "notebookd fork" in runs:
            x = last["notebookd fork"] / last[sv]
            out.append(f"| N={n} all ready, fork ≤ 0.25× supervisord | {x:.2f}x | {verdict(x <= 0.25)} |")
            firsts = {k: median([r["first"] for r in runs[k]]) for k in ("notebookd exec", "notebookd fork") if k in runs}
            out.append(f"| N={n} first ready ≤ 5 s | " + ", ".join(f"{k.split()[1]} {v:.1f} s" for k, v in firsts.items())
                       + f" | {verdict(max(firsts.values()) <= 5)} |")
        for k in ("notebookd exec", "notebookd fork"):
            if k in stop:
                x = stop[k] / stop[sv]
                out.append(f"| N={n} stop all ≤ 0.6× supervisord ({k.split()[1]}) | {x:.2f}x | {verdict(x <= 0.6)} |")
        if "notebookd fork" in pss and "notebookd exec" in pss:
            x = pss["notebookd fork"] / pss["notebookd exec"]
            out.append(f"| fork PSS per idle server ≤ 0.6× exec | {x:.2f}x | {verdict(x <= 0.6)} |")
    if "status" in res:
        s = res["status"]["status"]
        x = s["notebookd"] / s["supervisord"]
        out.append(f"| status median ≤ 50 ms and ≤ 0.25× supervisorctl | {s['notebookd'] * 1000:.0f} ms, {x:.2f}x | "
                   f"{verdict(s['notebookd'] <= 0.05 and x <= 0.25)} |")
        i = res["status"]["idle"]["notebookd"]
        out.append(f"| idle daemon, 100 users: ≤ 40 MB RSS, ≤ 0.2 % of a core | {i['rss'] / 1e6:.1f} MB, "
                   f"{i['cpu'] * 100:.2f} % | {verdict(i['rss'] <= 40e6 and i['cpu'] <= 0.002)} |")
    if "logs" in res:
        r = res["logs"]["notebookd"]
        out.append(f"| log capture ≤ 0.10 CPU-s/100 MB, 0 split, 0 lost | {r['capturer_cpu_per_100mb']:.3f} s, "
                   f"{r['split']} split, {r['lost']} lost | "
                   f"{verdict(r['capturer_cpu_per_100mb'] <= 0.10 and r['split'] == 0 and r['lost'] == 0)} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=5, one run, 50 MB of log, 35 s idle")
    ap.add_argument("--smoke", action="store_true",
                    help="N=2, one run, 2 status users, 2 MB of log, 1 s idle: that the bench still runs (the "
                         "test suite runs it); without supervisord if it is not installed")
    ap.add_argument("--n", default=None, help="comma-separated server counts for the cold start (default 10,30)")
    ap.add_argument("--reps", type=int, default=None, help="runs of each cold start per system (default 3)")
    ap.add_argument("--systems", default="supervisord,notebookd exec,notebookd fork,plain")
    ap.add_argument("--status-users", type=int, default=100)
    ap.add_argument("--status-calls", type=int, default=None)
    ap.add_argument("--log-mb", type=int, default=None)
    ap.add_argument("--idle-seconds", type=float, default=None)
    ap.add_argument("--only", default="cold,status,logs,scrape,ondemand",
                    help="scenarios to run (cold,status,logs,scrape,ondemand)")
    ap.add_argument("--ondemand-parts", default="first,restarts,memory",
                    help="parts of the ondemand scenario (first,restarts,memory)")
    ap.add_argument("--scrape-window", type=float, default=None, help="seconds per scrape/idle window")
    ap.add_argument("--scrape-rounds", type=int, default=None, help="pairs of scrape/idle windows (default 4)")
    ap.add_argument("--scrape-baseline", default=None,
                    help="a dir with another notebookd package: its daemon is scraped beside this one")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()
    q, smoke = args.quick, args.smoke
    args.n = [int(x) for x in (args.n or ("2" if smoke else "5" if q else "10,30")).split(",")]
    args.reps = args.reps or (1 if q or smoke else 3)
    args.status_calls = args.status_calls or (3 if smoke else 11 if q else 31)
    args.log_mb = args.log_mb or (2 if smoke else 50 if q else 200)
    args.idle_seconds = args.idle_seconds or (1 if smoke else 35 if q else 65)
    if smoke:
        args.status_users = min(args.status_users, 2)
    only = set(args.only.split(","))
    systems = [s.strip() for s in args.systems.split(",")]
    if not os.path.exists(os.path.join(BIN, "supervisord")):
        if not smoke:
            print(f"bench/run: no supervisord in {BIN} (pip install supervisor)", file=sys.stderr)
            return 2
        log("no supervisord: a smoke run of notebookd alone (cold start only)")
        systems = [s for s in systems if s != "supervisord"]
        only &= {"cold"}
    from bench import ondemand
    if os.geteuid() != 0:
        print("bench/run: run as root (it creates users and runs servers as them)", file=sys.stderr)
        return 2
    header = machine()
    log(header)
    work = tempfile.mkdtemp(prefix="nbb-")
    os.chmod(work, 0o755)
    scrape_users = args.status_users * (2 if args.scrape_baseline else 1) if "scrape" in only else 1
    users = make_users(max(args.n + [args.status_users if "status" in only else 1, scrape_users]
                           + [ondemand.users_needed(smoke, q) if "ondemand" in only else 1]))
    log(f"{len(users)} users {users[0]}…, work dir {work}")
    res: dict = {}
    try:
        if "cold" in only:
            res["cold"] = {}
            for n in args.n:
                runs = {s: [] for s in systems}
                for rep in range(args.reps):
                    order = systems[rep % len(systems):] + systems[:rep % len(systems)]
                    for system in order:
                        runs[system].append(cold(work, users[:n], system, rep, 0.5 if smoke else 5))
                res["cold"][n] = runs
        if "status" in only:
            res["status"] = status_and_idle(work, users[:args.status_users], args.status_calls, args.idle_seconds,
                                            0.5 if smoke else 3)
        if "logs" in only:
            res["logs"] = log_capture(work, users[0], args.log_mb * 10**6)
        if "scrape" in only:
            from bench import scrape

            res["scrape"] = scrape.run(work, users[:scrape_users], args.scrape_window or (1 if smoke else 30 if q else 60),
                                       args.scrape_rounds or (1 if smoke else 2 if q else 4), 15.0, sys.modules[__name__],
                                       args.scrape_baseline)
        if "ondemand" in only:
            res["ondemand"] = ondemand.run(sys.modules[__name__], work, users, smoke, q, args.idle_seconds,
                                           tuple(args.ondemand_parts.split(",")))
    finally:
        delete_users(users)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    text = f"Machine: {header}\n\nCommand: `bench/run {' '.join(sys.argv[1:])}`\n" + table(res, args)
    if "scrape" in res:
        from bench import scrape

        text += "\n" + scrape.table(res["scrape"])
    if "ondemand" in res:
        text += "\n" + ondemand.table(res["ondemand"])
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
