"""The cost of Prometheus scraping: notebookd with N stub users and `metrics: {listen: …}`, its CPU
over windows without scrapes and windows with a scrape every 15 s, alternately (A B B A …), so load
from other work on the machine hits both alike.

With `--scrape-baseline DIR` (a directory holding another notebookd package, e.g. `git archive` of
an older commit), a second daemon of that code runs beside it with N users of its own, through the
same windows (both scraped, or neither): before and after a change, measured side by side.

Each scrape is what Prometheus would cause: GET /metrics, which reads the servers' memory and CPU
and, at most once per `metrics.activity_interval`, probes every running server's /api/status (the
stub answers it like jupyter_server does). The idle windows show the noise: every window's figure
is kept, and the spread of the idle ones is what a difference must exceed to be visible.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request


def scrape(port: int) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        size = len(resp.read())
    return time.perf_counter() - t, size


def _daemon(work: str, users: list[str], tag: str, stub: str, h, pythonpath: str | None):
    setup = h.Setup(work, users, tag, {"command": [h.PY, "-I", stub]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    setup.config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    with open(setup.config_path, "w") as fh:
        json.dump(setup.config, fh)
    nbd = h.Notebookd(setup)
    if pythonpath:
        nbd.env["PYTHONPATH"] = pythonpath
    nbd.start()
    return setup, nbd, port


def run(work: str, users: list[str], window: float, rounds: int, every: float, h,
        baseline: str | None = None) -> dict:
    """`h`: the bench's own module (Setup, Notebookd, wait_ready, cpu_seconds, rss_bytes, …); with a
    `baseline`, `users` has twice the users: the second half is the baseline daemon's."""
    stub = h.install_stub(work)
    n = len(users) // 2 if baseline else len(users)
    # this checkout's code, not whatever the venv has installed (the baseline is the other directory)
    daemons = {"this": _daemon(work, users[:n], "scrape-this", stub, h, os.path.dirname(h.HERE))}
    if baseline:
        daemons["baseline"] = _daemon(work, users[n:2 * n], "scrape-baseline", stub, h, baseline)
    windows = {d: {"idle": [], "scraped": []} for d in daemons}
    latencies = {d: [] for d in daemons}
    size, rss = {}, {}
    try:
        for name, (setup, nbd, port) in daemons.items():
            ready = asyncio.run(h.wait_ready(setup.targets(), time.monotonic(), 1200))
            assert max(ready) < 1200, f"{name}: stub servers did not come up"
        time.sleep(5)
        for name, (_, _, port) in daemons.items():
            latencies[name].append(scrape(port)[0])  # the first one: every probe from cold
        load = [os.getloadavg()[0]]
        for i in range(rounds):
            for kind in ("idle", "scraped") if i % 2 == 0 else ("scraped", "idle"):
                before = {d: h.cpu_seconds(nbd.proc.pid) for d, (_, nbd, _) in daemons.items()}
                t = time.monotonic()
                if kind == "scraped":
                    while time.monotonic() - t < window:
                        took = 0.0
                        for name, (_, _, port) in daemons.items():
                            one, size[name] = scrape(port)
                            latencies[name].append(one)
                            took += one
                        time.sleep(max(0.0, every - took))
                else:
                    time.sleep(window)
                span = time.monotonic() - t
                for d, (_, nbd, _) in daemons.items():
                    windows[d][kind].append((h.cpu_seconds(nbd.proc.pid) - before[d]) / span)
            load.append(os.getloadavg()[0])
        for d, (_, nbd, _) in daemons.items():
            rss[d] = h.rss_bytes(nbd.proc.pid)
    finally:
        for _, nbd, _ in daemons.values():
            nbd.stop()
        h.kill_users(users)
    result = {"window": window, "every": every, "users": n, "baseline": baseline, "load": load, "daemons": {}}
    for d in daemons:
        w = windows[d]
        r = {"idle": h.median(w["idle"]), "scraped": h.median(w["scraped"]), "windows": w,
             "noise": max(w["idle"]) - min(w["idle"]), "scrape_ms": h.median(latencies[d][1:]) * 1000,
             "first_scrape_ms": latencies[d][0] * 1000, "bytes": size.get(d, 0), "rss": rss.get(d, 0)}
        result["daemons"][d] = r
        h.log(f"scrape ({d}): idle {r['idle'] * 100:.3f} %, scraped every {every:g} s {r['scraped'] * 100:.3f} % "
              f"of a core (idle windows spread {r['noise'] * 100:.3f} %); scrape {r['scrape_ms']:.0f} ms")
    return result


def _pct(xs: list[float]) -> str:
    return ", ".join(f"{x * 100:.2f}" for x in xs)


def table(r: dict) -> str:
    lines = [f"\n### Scraping: {r['users']} users (stub servers) per daemon, GET /metrics every {r['every']:g} s, "
             f"{len(r['daemons']['this']['windows']['idle'])} + {len(r['daemons']['this']['windows']['scraped'])} "
             f"windows of {r['window']:.0f} s\n",
             f"Load average (1 min) at the start and after each round: {', '.join(f'{x:.1f}' for x in r['load'])}.\n",
             "| daemon | idle (median) | scraped (median) | difference | idle windows (spread) | scraped windows | "
             "one scrape | text |", "|---|---|---|---|---|---|---|---|"]
    for name, d in r["daemons"].items():
        label = "this code" if name == "this" else f"baseline ({r['baseline']})"
        lines.append(f"| {label} | {d['idle'] * 100:.3f} % | {d['scraped'] * 100:.3f} % | "
                     f"{(d['scraped'] - d['idle']) * 100:+.3f} % | {_pct(d['windows']['idle'])} "
                     f"({d['noise'] * 100:.3f}) | {_pct(d['windows']['scraped'])} | {d['scrape_ms']:.0f} ms | "
                     f"{d['bytes'] / 1024:.0f} KiB |")
    lines.append("\nCPU in % of one core; a difference within the idle windows' spread is not visible.")
    return "\n".join(lines)
