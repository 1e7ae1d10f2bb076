"""On-demand servers and held sockets (issue 12), side by side in one run.

- **First request.** Users with `start: on-demand` and no process; one plain GET {base_url}api each, the
  clock from connect() to the first byte of the answer. `spawn: fork` and `spawn: exec` are two daemons up
  together, their users woken alternately, one at a time. Then N fork users hit at the same moment.
- **Restarts.** A client loop (GET {base_url}api, a new connection each time) during restarts of each kind,
  against notebookd (native, `spawn: exec`) and supervisord running the same server, both up together.
- **Memory.** U configured users of which A are woken: the PSS of everything notebookd runs (daemon, fork
  template, servers), against the same U users always running; the daemon's CPU while all U are idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

PY = sys.executable  # the bench's interpreter: notebookd and supervisor are installed beside it
CTL = os.path.join(os.path.dirname(PY), "supervisorctl")
KINDS = ("restart", "token rotation", "reload", "health check", "kill -9")
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


# ------------------------------------------------------------------ clients

def first_byte(ip: str, port: int, path: str, timeout: float = 120) -> tuple[float, int]:
    """Seconds from connect() to the first byte of the answer to GET `path`, and its status."""
    t = time.monotonic()
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(65536)
        took = time.monotonic() - t
        while chunk := s.recv(65536):
            data += chunk
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return took, int(m.group(1)) if m else 0


class ClientLoop:
    """GET {base_url}api over and over (a new connection each time, one every `pace` s at most),
    counting answers, refused connections and everything else that went wrong."""

    def __init__(self, ip: str, port: int, path: str, pace: float = 0.01):
        self.addr, self.path, self.pace = (ip, port), path, pace
        self.answered = self.refused = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: {self.addr[0]}\r\nConnection: close\r\n\r\n".encode()
        while not self._stop.is_set():
            try:
                with socket.create_connection(self.addr, timeout=60) as s:
                    s.sendall(request)
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                if data.startswith(b"HTTP/1.1 200"):
                    self.answered += 1
                else:
                    self.failed += 1
                    self.errors.append(data[:40].decode(errors="replace") or "closed without an answer")
            except ConnectionRefusedError:
                self.refused += 1
            except OSError as exc:
                self.failed += 1
                self.errors.append(repr(exc))
            self._stop.wait(self.pace)


# ------------------------------------------------------------------ notebookd and supervisord, as seen from outside

def rows(nbd) -> dict[str, dict]:
    out = subprocess.run([PY, "-m", "notebookd", "status", "--json"], env=nbd.env, capture_output=True, text=True)
    try:
        return {r["name"]: r for r in json.loads(out.stdout)["servers"]}
    except (json.JSONDecodeError, KeyError):
        return {}  # the daemon not answering yet


def stop(daemon, timeout: float = 900) -> None:
    """SIGTERM and wait: 100 exec'd servers on a loaded 2-core box take minutes to stop (not measured here)."""
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout)
    daemon.log.close()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.25)  # most predicates run a CLI: keep their CPU small beside the servers'
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_states(nbd, names, state: str, timeout: float = 600) -> dict:
    return wait_until(lambda: (r := rows(nbd)) and all(r.get(n, {}).get("state") == state for n in names) and r,
                      timeout, f"{len(names)} users {state}")


def answers(h, spec) -> bool:
    return asyncio.run(h.http_status(spec.ip, spec.port, spec.base_url + "api", timeout=5)) == 200


def tree(pid: int, h) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += h.children(p)
    return found


def total_pss(h, daemon_pid: int, users: list[str]) -> int:
    """Everything the daemon runs: itself, its descendants (fork template, servers) and any process of
    the users (a server re-parented elsewhere, a kernel)."""
    import pwd

    pids = tree(daemon_pid, h)
    for name in users:
        pids |= set(h.uid_pids(pwd.getpwnam(name).pw_uid))
    return sum(map(h.pss_bytes, pids))


# ------------------------------------------------------------------ scenarios

def first_request(h, work: str, fork_users: list[str], exec_users: list[str], burst_users: list[str],
                  settle: float) -> dict:
    """The first user of each daemon is a warm-up (not counted): it starts the fork template, as any
    earlier user of a running daemon has."""
    on = {"start": "on-demand", "start_timeout": "120s"}
    fork = h.Setup(work, fork_users + burst_users, "od-first-fork", {**on, "spawn": "fork"})
    exe = h.Setup(work, exec_users, "od-first-exec", on)
    daemons = {"fork": h.Notebookd(fork), "exec": h.Notebookd(exe)}
    for d in daemons.values():
        d.start()
    out: dict = {"fork": [], "exec": [], "burst": []}
    try:
        wait_states(daemons["fork"], fork_users + burst_users, "idle")
        wait_states(daemons["exec"], exec_users, "idle")
        specs = {"fork": [fork.specs[u] for u in fork_users], "exec": [exe.specs[u] for u in exec_users]}
        for i in range(len(fork_users)):
            for system in ("fork", "exec") if i % 2 == 0 else ("exec", "fork"):
                spec = specs[system][i]
                took, status = first_byte(spec.ip, spec.port, spec.base_url + "api")
                if status != 200:
                    raise RuntimeError(f"first request to idle {spec.name} ({system}): status {status}")
                if i:  # [0]: the warm-up
                    out[system].append(took)
                h.log(f"first request, {system}: {spec.name} {took:.2f} s{' (warm-up)' if not i else ''}")
                time.sleep(settle)  # the server just woken finishes its start-up work before the next one
        # the servers just woken finish their start-up work (and the daemons their first health checks)
        # before the burst: "10 idle users at the same moment" on a machine otherwise at rest
        time.sleep(10 * settle)
        burst = [fork.specs[u] for u in burst_users]
        gate = threading.Barrier(len(burst))
        results: list = [None] * len(burst)

        def hit(i, spec):
            gate.wait()
            results[i] = first_byte(spec.ip, spec.port, spec.base_url + "api")

        threads = [threading.Thread(target=hit, args=(i, s)) for i, s in enumerate(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        if any(r is None or r[1] != 200 for r in results):
            raise RuntimeError(f"a burst request was not answered: {results}")
        out["burst"] = [r[0] for r in results]
        h.log(f"burst of {len(burst)} (fork): answered after " + ", ".join(f"{x:.2f}" for x in sorted(out["burst"]))
              + " s")
    finally:
        for d in daemons.values():
            stop(d)
        h.kill_users(fork_users + burst_users + exec_users)
    # the floor: the same server (argv, environment, files) spawned by hand and polled until it answers
    out["plain"] = []
    for i, name in enumerate(exec_users):
        took = plain_first(h, exe, name)
        if i:
            out["plain"].append(took)
        h.log(f"plain jupyter, spawned to first answer: {name} {took:.2f} s{' (warm-up)' if not i else ''}")
        time.sleep(settle)
    return out


def plain_first(h, setup, name: str) -> float:
    """Seconds from spawning `jupyter server` (no notebookd) to the first 200 on GET {base_url}api,
    asked every 10 ms: what any start costs, which an on-demand start cannot beat."""
    spec, run = setup.specs[name], setup.server_files(name)
    t0 = time.monotonic()
    proc = h.spawn_as(spec, [*h.launch.enter(run.cwd), *run.argv], run.env, os.path.join(setup.dir, f"plain-{name}.log"))
    try:
        while True:
            try:
                _, status = first_byte(spec.ip, spec.port, spec.base_url + "api", timeout=30)
                if status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"plain jupyter for {name} never answered (exit {proc.poll()})")
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        h.kill_users([name])


class _Notebookd:
    """Restarts of each kind, made the way an admin (or a failure) makes them."""

    def __init__(self, h, setup):
        self.h, self.setup, self.d = h, setup, h.Notebookd(setup)
        self.name = next(iter(setup.specs))
        self.gen = 0

    def start(self):
        self.d.start()
        wait_states(self.d, [self.name], "running")

    def pid(self) -> int:
        return rows(self.d).get(self.name, {}).get("pid") or 0

    def cli(self, *args):
        out = subprocess.run([PY, "-m", "notebookd", *args], env=self.d.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"notebookd {' '.join(args)}: {out.stderr.strip()}")

    def restart(self, kind: str, pid: int) -> None:
        if kind == "restart":
            self.cli("restart", self.name)
        elif kind == "token rotation":
            self.cli("token", "--rotate", self.name)
        elif kind == "reload":  # a change to the user's entry: its server is restarted with it
            self.gen += 1
            self.setup.config["users"][self.name]["env"] = {"NBB_GENERATION": str(self.gen)}
            with open(self.setup.config_path, "w") as fh:
                json.dump(self.setup.config, fh)
            self.cli("reload")
        elif kind == "health check":  # health: {interval: 1s, timeout: 2s, failures: 1}
            hang_until_sigterm(pid, lambda: None)
        elif kind == "kill -9":
            os.kill(pid, signal.SIGKILL)

    def ready(self, old: int) -> bool:
        r = rows(self.d).get(self.name, {})
        return r.get("state") == "running" and r.get("pid") not in (None, old)

    def stop(self):
        stop(self.d)


class _Supervisord:
    """The same restarts through supervisord: it has no token, no reload of one program's settings
    but `update` after an edit, and no health check (an outside check's `supervisorctl restart`)."""

    def __init__(self, h, setup):
        self.h, self.setup, self.d = h, setup, h.Supervisord(setup)
        self.name = next(iter(setup.specs))
        self.spec = setup.specs[self.name]
        self.token_file = setup.server_files(self.name).env["JUPYTER_TOKEN_FILE"]
        self.gen = 0

    def start(self):
        self.d.start()
        wait_until(lambda: answers(self.h, self.spec), 300, "supervisord's server ready")

    def pid(self) -> int:
        out = subprocess.run([CTL, "-c", self.d.conf, "pid", self.name], capture_output=True, text=True)
        return int(out.stdout.strip()) if out.stdout.strip().isdigit() else 0

    def ctl(self, *args):
        out = subprocess.run([CTL, "-c", self.d.conf, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"supervisorctl {' '.join(args)}: {out.stdout.strip()} {out.stderr.strip()}")

    def restart(self, kind: str, pid: int) -> None:
        if kind == "restart":
            self.ctl("restart", self.name)
        elif kind == "token rotation":  # a new token in the server's token file, then a restart
            with open(self.token_file, "r+") as fh:
                fh.seek(0)
                fh.write(secrets.token_hex(24))
                fh.truncate()
            self.ctl("restart", self.name)
        elif kind == "reload":
            self.gen += 1
            with open(self.d.conf) as fh:
                text = fh.read()
            text = re.sub(r"^(environment=.*?)(,NBB_GENERATION=\"\d+\")?$",
                          lambda m: f'{m.group(1)},NBB_GENERATION="{self.gen}"', text, flags=re.M)
            with open(self.d.conf, "w") as fh:
                fh.write(text)
            self.ctl("update")
        elif kind == "health check":
            hang_until_sigterm(pid, lambda: self.ctl("restart", self.name))
        elif kind == "kill -9":
            os.kill(pid, signal.SIGKILL)

    def ready(self, old: int) -> bool:
        return self.pid() not in (0, old) and answers(self.h, self.spec)

    def stop(self):
        self.d.stop()


def hang_until_sigterm(pid: int, restart) -> None:
    """A server that stops answering (SIGSTOP) until whoever checks its health sends it SIGTERM; then it
    runs on (SIGCONT) and handles the SIGTERM as any stop: the probe failed, the process was not dead."""
    os.kill(pid, signal.SIGSTOP)
    t = threading.Thread(target=restart, daemon=True)
    t.start()
    try:
        wait_until(lambda: _pending(pid) & SIGTERM_BIT, 120, f"SIGTERM to the hung server {pid}")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # notebookd sends SIGCONT after SIGTERM itself: the server may have handled it and exited
    t.join(300)


def _pending(pid: int) -> int:
    bits = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    bits |= int(line.split()[1], 16)
    except OSError:
        return SIGTERM_BIT  # gone already: nothing to wait for
    return bits


def restarts(h, work: str, nbd_user: str, sv_user: str, count: int) -> dict:
    server = {"stop_timeout": "10s", "start_timeout": "120s"}
    setup_n = h.Setup(work, [nbd_user], "od-restarts-notebookd", server)
    # fast health checks (a hung server is found in ~3 s) and no crash-loop backoff for 10 kills in a row
    setup_n.config.update(health={"interval": "1s", "timeout": "2s", "failures": 1},
                          restart={"backoff_min": "0.5s", "backoff_max": "2s", "crashloop_after": 50})
    with open(setup_n.config_path, "w") as fh:
        json.dump(setup_n.config, fh)
    setup_s = h.Setup(work, [sv_user], "od-restarts-supervisord", server)
    systems = {"notebookd": _Notebookd(h, setup_n), "supervisord": _Supervisord(h, setup_s)}
    out: dict = {s: {} for s in systems}
    try:
        for s in systems.values():
            s.start()
        for k, kind in enumerate(KINDS):
            for name in ("notebookd", "supervisord") if k % 2 == 0 else ("supervisord", "notebookd"):
                system = systems[name]
                spec = system.setup.specs[system.name]
                t = time.monotonic()
                with ClientLoop(spec.ip, spec.port, spec.base_url + "api") as loop:
                    for _ in range(count):
                        old = system.pid()
                        system.restart(kind, old)
                        wait_until(lambda: system.ready(old), 300, f"{name} back after {kind}")
                    seen = loop.answered
                    wait_until(lambda: loop.answered > seen, 120, "an answer after the last restart")
                out[name][kind] = {"answered": loop.answered, "refused": loop.refused, "failed": loop.failed,
                                   "errors": loop.errors[:3], "seconds": time.monotonic() - t}
                h.log(f"restarts, {name}, {count} × {kind}: answered {loop.answered}, refused {loop.refused}, "
                      f"failed {loop.failed} {loop.errors[:2]}")
    finally:
        for s in systems.values():
            if s.d.proc is not None:
                s.stop()
        h.kill_users([nbd_user, sv_user])
    return out


def memory(h, work: str, users: list[str], active: int, idle_seconds: float, settle: float,
           with_exec: bool) -> dict:
    """U users on demand, A of them woken, against U always running (fork, and exec if asked)."""
    out: dict = {"users": len(users), "active": active, "idle_seconds": idle_seconds}
    variants = [("on-demand", {"start": "on-demand", "spawn": "fork"}), ("always, fork", {"spawn": "fork"})]
    if with_exec:
        variants.append(("always, exec", {}))
    for label, server in variants:
        setup = h.Setup(work, users, f"od-memory-{label.replace(', ', '-')}", {**server, "start_timeout": "600s"})
        d = h.Notebookd(setup)
        d.start()
        try:
            if label == "on-demand":
                wait_states(d, users, "idle")
            else:
                ready = asyncio.run(h.wait_ready(setup.targets(), time.monotonic(), 1200))
                if max(ready) == float("inf"):
                    raise RuntimeError(f"memory, {label}: not every server became ready")
            time.sleep(settle)
            before, t = h.cpu_seconds(d.proc.pid), time.monotonic()
            time.sleep(idle_seconds)
            cpu = (h.cpu_seconds(d.proc.pid) - before) / (time.monotonic() - t)
            row = {"cpu": cpu, "rss": h.rss_bytes(d.proc.pid)}
            if label == "on-demand":
                for name in users[:active]:
                    spec = setup.specs[name]
                    status = first_byte(spec.ip, spec.port, spec.base_url + "api")[1]
                    if status != 200:
                        raise RuntimeError(f"memory: {name} answered {status}")
                time.sleep(settle)
            running = [r for r in rows(d).values() if r.get("pid")]
            row.update(pss=total_pss(h, d.proc.pid, users), running=len(running))
            out[label] = row
            h.log(f"memory, {label}: {len(running)} running, PSS {row['pss'] / 2**20:.0f} MiB, daemon CPU "
                  f"{cpu * 100:.3f} % over {idle_seconds:.0f} s (before any was woken)")
        finally:
            stop(d)
            h.kill_users(users)
    return out


PARTS = ("first", "restarts", "memory")


def run(h, work: str, users: list[str], smoke: bool, quick: bool, idle_seconds: float,
        parts: tuple[str, ...] = PARTS) -> dict:
    """`h`: the bench's own module (Setup, Notebookd, Supervisord, helpers); `parts`: which of the three."""
    n, burst, count, memory_users, active = sizes(smoke, quick)
    res = {"n": n, "restarts_each": count}
    fork_users, exec_users = users[:n + 1], users[n + 1:2 * (n + 1)]
    if "first" in parts:
        res["first"] = first_request(h, work, fork_users, exec_users, users[2 * (n + 1):2 * (n + 1) + burst],
                                     0.2 if smoke else 1)
    if "restarts" in parts:
        res["restarts"] = restarts(h, work, users[0], users[1], count)
    if "memory" in parts:
        res["memory"] = memory(h, work, users[:memory_users], active, idle_seconds, 0.5 if smoke else 5,
                               with_exec=not smoke)
    return res


def sizes(smoke: bool, quick: bool) -> tuple[int, int, int, int, int]:
    """Users woken one at a time (per spawn), users in the burst, restarts of each kind, configured
    users and active ones in the memory figure. Full: the issue's 20, 10, 10, 100 and 10."""
    return (2, 2, 1, 4, 1) if smoke else (6, 5, 3, 30, 3) if quick else (20, 10, 10, 100, 10)


def users_needed(smoke: bool, quick: bool) -> int:
    n, burst, _, memory_users, _ = sizes(smoke, quick)
    return max(2 * (n + 1) + burst, memory_users)  # each spawn's n users and its warm-up, then the burst


# ------------------------------------------------------------------ the tables

def table(r: dict) -> str:
    out = []
    if "first" in r:
        out += _first_table(r)
    if "restarts" in r:
        out += _restarts_table(r)
    if "memory" in r:
        out += _memory_table(r)
    return "\n".join(out)


def _first_table(r: dict) -> list[str]:
    f = r["first"]
    out = [f"\n### On demand: first request to an idle user → first byte ({r['n']} users each, one at a time)\n",
           "| spawn | median | max | goal (median) | |", "|---|---|---|---|---|"]
    for system, goal in (("fork", 1.2), ("exec", 2.0)):
        m = statistics.median(f[system])
        out.append(f"| {system} | {m:.2f} s | {max(f[system]):.2f} s | ≤ {goal:.1f} s | "
                   f"{'met' if m <= goal else '**missed**'} |")
    if f.get("plain"):
        m = statistics.median(f["plain"])
        out.append(f"| plain `jupyter server`, spawned by hand, to its first answer | {m:.2f} s | {max(f['plain']):.2f} s "
                   f"| (the floor) | exec / plain: {statistics.median(f['exec']) / m:.2f}x |")
    last = max(f["burst"])
    out += [f"\n{len(f['burst'])} idle users (fork) hit at the same moment: first answered after "
            f"{min(f['burst']):.2f} s, median {statistics.median(f['burst']):.2f} s, **last {last:.2f} s** (goal ≤ 3 s: "
            f"{'met' if last <= 3 else '**missed**'})."]
    return out


def _restarts_table(r: dict) -> list[str]:
    out = [f"\n### Restarts under a client loop ({r['restarts_each']} of each kind; GET {{base_url}}api, a new "
            "connection every ≥ 10 ms)\n",
            "| kind | notebookd refused | notebookd failed | supervisord refused | supervisord failed | answered (notebookd / supervisord) |",
            "|---|---|---|---|---|---|"]
    rs = r["restarts"]
    for kind in KINDS:
        a, b = rs["notebookd"][kind], rs["supervisord"][kind]
        out.append(f"| {kind} | {a['refused']} | {a['failed']} | {b['refused']} | {b['failed']} | "
                   f"{a['answered']} / {b['answered']} |")
    return out


def _memory_table(r: dict) -> list[str]:
    m = r["memory"]
    od, base = m["on-demand"], m["always, fork"]
    out = [f"\n### Memory: {m['users']} configured users, {m['active']} of them active\n",
            "| | servers running | total PSS | ratio to on-demand | daemon CPU, all idle or all up "
            f"({m['idle_seconds']:.0f} s, % of a core) | daemon RSS |",
            "|---|---|---|---|---|---|"]
    for label in ("on-demand", "always, fork", "always, exec"):
        if label in m:
            x = m[label]
            out.append(f"| {label} | {x['running']} | {x['pss'] / 2**20:.0f} MiB | "
                       f"{x['pss'] / od['pss']:.2f}x | {x['cpu'] * 100:.3f} % | {x['rss'] / 2**20:.1f} MiB |")
    worst = m.get("always, exec", base)
    out.append(f"\nOn demand / always running: {od['pss'] / base['pss']:.3f}× of `spawn: fork`"
               + (f", {od['pss'] / worst['pss']:.3f}× of `spawn: exec`" if "always, exec" in m else "")
               + f" (goal ≤ 0.15×: {'met' if od['pss'] / worst['pss'] <= 0.15 else '**missed**'} against "
               + ("exec" if "always, exec" in m else "fork") + ").")
    return out
