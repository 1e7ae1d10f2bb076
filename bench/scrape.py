"""The cost of Prometheus scraping: one notebookd with N stub users and `metrics: {listen: …}`, its CPU
over windows without scrapes and windows with a scrape every 15 s, alternately (A B A B), so load from
other work on the machine hits both alike.

Each scrape is what Prometheus would cause: GET /metrics, which probes every running server's
/api/status (the stub answers it like jupyter_server does) and reads memory and CPU once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
import urllib.request


def scrape(port: int) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        size = len(resp.read())
    return time.perf_counter() - t, size


def run(work: str, users: list[str], window: float, rounds: int, every: float, h) -> dict:
    """`h`: the bench's own module (Setup, Notebookd, wait_ready, cpu_seconds, rss_bytes, …)."""
    stub = os.path.join(work, "stub.py")
    shutil.copy(os.path.join(h.HERE, "stub.py"), stub)
    os.chmod(stub, 0o644)
    setup = h.Setup(work, users, "scrape-notebookd", {"command": [h.PY, "-I", stub]})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    setup.config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    with open(setup.config_path, "w") as fh:
        json.dump(setup.config, fh)
    nbd = h.Notebookd(setup)
    nbd.start()
    windows: dict[str, list[float]] = {"idle": [], "scraped": []}
    latencies, size = [], 0
    try:
        ready = asyncio.run(h.wait_ready(setup.targets(), time.monotonic(), 300))
        assert max(ready) < 300, "stub servers did not come up"
        time.sleep(5)
        latencies.append(scrape(port)[0])  # the first one: every probe from cold
        for i in range(rounds):
            for kind in ("idle", "scraped") if i % 2 == 0 else ("scraped", "idle"):
                before, t = h.cpu_seconds(nbd.proc.pid), time.monotonic()
                if kind == "scraped":
                    while time.monotonic() - t < window:
                        took, size = scrape(port)
                        latencies.append(took)
                        time.sleep(max(0.0, every - took))
                else:
                    time.sleep(window)
                span = time.monotonic() - t
                windows[kind].append((h.cpu_seconds(nbd.proc.pid) - before) / span)
        rss = h.rss_bytes(nbd.proc.pid)
    finally:
        nbd.stop()
        h.kill_users(users)
    result = {"idle": h.median(windows["idle"]), "scraped": h.median(windows["scraped"]), "windows": windows,
              "window": window, "every": every, "scrape_ms": h.median(latencies[1:]) * 1000,
              "first_scrape_ms": latencies[0] * 1000, "bytes": size, "rss": rss, "users": len(users)}
    h.log(f"scrape: idle {result['idle'] * 100:.2f} %, scraped every {every:g} s {result['scraped'] * 100:.2f} % "
          f"of a core; scrape {result['scrape_ms']:.0f} ms, {size} bytes")
    return result


def table(r: dict) -> str:
    return "\n".join([
        f"\n### Scraping: {r['users']} users (stub servers), GET /metrics every {r['every']:g} s\n",
        "| | daemon CPU (% of one core, median of windows) |", "|---|---|",
        f"| idle, not scraped ({len(r['windows']['idle'])} × {r['window']:.0f} s) | {r['idle'] * 100:.2f} % |",
        f"| scraped every {r['every']:g} s ({len(r['windows']['scraped'])} × {r['window']:.0f} s) | "
        f"{r['scraped'] * 100:.2f} % |",
        f"| difference | {(r['scraped'] - r['idle']) * 100:+.2f} % |",
        "",
        f"One scrape: {r['scrape_ms']:.0f} ms (median; the first, from cold, {r['first_scrape_ms']:.0f} ms), "
        f"{r['bytes'] / 1024:.0f} KiB of text; daemon RSS {r['rss'] / 2**20:.1f} MiB.",
    ])
