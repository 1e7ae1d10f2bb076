"""Prometheus metrics, checked by Debian's own Prometheus: the endpoint it scrapes, the textfile that
node_exporter would read, the README's alert rules, and an endpoint that only answers GET /metrics.

One daemon (native backend, two real users) and one Prometheus (1 s scrape interval, its own storage
and port, stopped by pid) serve the whole module.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest

from conftest import Daemon, free_ports, http, needs_root, wait_for
from notebookd.metrics import STATES

pytestmark = needs_root

PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(low: int, metrics_port: int, textfile: str, users: list[str]) -> str:
    entries = "\n".join(f"  {u}: {{}}" for u in users)
    return f"""\
listen: {{ports: {low}-{low + 10}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
restart: {{backoff_min: 0.5s, backoff_max: 3s}}
health: {{interval: 2s, timeout: 5s, failures: 2}}
server: {{stop_timeout: 5s}}
metrics: {{listen: 127.0.0.1:{metrics_port}, textfile: {textfile}, interval: 1s, activity_interval: 3s}}
users:
{entries}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = [users("mtalice").pw_name, users("mtbob").pw_name]
    low = free_ports(1, 24000)[0]
    port = free_ports(1, 25500)[0]
    textfile = os.path.join(workdir, "textfile", "notebookd.prom")
    os.makedirs(os.path.dirname(textfile))
    daemon = Daemon(workdir, config(low, port, textfile, names))
    daemon.names, daemon.metrics_port, daemon.textfile = names, port, textfile
    daemon.config_text = config(low, port, textfile, names)
    daemon.start()
    yield daemon
    daemon.stop()


class Prometheus:
    """Debian's prometheus, on loopback, scraping the daemon every second."""

    def __init__(self, base: str, target_port: int):
        self.dir = os.path.join(base, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_ports(1, 26500)[0]
        conf = os.path.join(self.dir, "prometheus.yml")
        with open(conf, "w") as fh:
            fh.write(f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: notebookd
    static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
""")
        self.log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={self.dir}/data",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        wait_for(lambda: self.proc.poll() is not None or http(f"{self.base}/-/ready")[0] == 200, 90,
                 what="prometheus ready")
        assert self.proc.poll() is None, self.output()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        with open(os.path.join(self.dir, "prometheus.log"), errors="replace") as fh:
            return fh.read()[-5000:]

    def query(self, expr: str) -> dict[tuple, float]:
        """{sorted label items (without __name__): value} of an instant query."""
        status, body, _ = http(f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, body
        data = json.loads(body)["data"]["result"]
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(r["value"][1])
                for r in data}

    def value(self, expr: str) -> float | None:
        found = self.query(expr)
        assert len(found) <= 1, found
        return next(iter(found.values()), None)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


@pytest.fixture(scope="module")
def prom(lab, workdir):
    p = Prometheus(workdir, lab.metrics_port)
    # its first scrape: notebookd's own series, up=1
    wait_for(lambda: p.value('up{job="notebookd"}') == 1, 60, what="prometheus scraped notebookd")
    yield p
    p.stop()


def scrape(lab) -> str:
    status, body, headers = http(f"http://127.0.0.1:{lab.metrics_port}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4"), (status, body)
    return body.decode()


def parsed(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}}, by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def at_the_same_moment(prom: Prometheus, lab, expr: str, from_row, until=lambda got: True) -> tuple[dict, dict]:
    """Prometheus' figure for each user and `status --json`'s, taken when Prometheus has scraped since
    the status was read and nothing changed in between (status read before and after agree)."""
    def take():
        before = lab.rows()
        found = prom.query(expr)
        after = lab.rows()
        want = {n: from_row(before[n]) for n in lab.names}
        if want != {n: from_row(after[n]) for n in lab.names}:
            return None
        got = {dict(k)["user"]: v for k, v in found.items()}
        return (got, want) if got == want and until(got) else None
    return wait_for(take, 30, interval=0.5, what=f"prometheus' {expr} to agree with status")


def test_prometheus_sees_each_running_server(lab, prom):
    got, want = at_the_same_moment(prom, lab, 'notebookd_server_state{state="running"} == 1',
                                   lambda r: 1.0 if r["state"] == "running" else None)
    assert set(got) == set(lab.names) and all(v == 1.0 for v in got.values())
    # every state is there for every user (zeros, not absent series), and the per-state counts add up
    states = prom.query("notebookd_server_state")
    assert len(states) == len(STATES) * len(lab.names)
    assert prom.value('notebookd_servers{state="running"}') == len(lab.names)
    assert prom.value('notebookd_servers{state="idle"}') == 0  # every state of model.ServerState, pre-created
    assert prom.value('notebookd_build_info{backend="native"}') == 1
    memory = prom.query("notebookd_server_memory_bytes")
    assert all(v > 20 * 2**20 for v in memory.values()) and len(memory) == 2, "a jupyter_server's tree, in bytes"


def test_kill_9_counts_one_restart_for_exit(lab, prom):
    bob = lab.names[1]
    expr = f'notebookd_server_restarts_total{{user="{bob}",reason="exit"}}'
    before_row = lab.rows()[bob]
    wait_for(lambda: prom.value(expr) == before_row["restarts"], 30, what="prometheus' restart count to match status")
    before = prom.value(expr)
    os.kill(before_row["pid"], signal.SIGKILL)
    lab.wait_replaced(bob, before_row["pid"])
    got, want = at_the_same_moment(prom, lab, f'notebookd_server_restarts_total{{reason="exit"}}',
                                   lambda r: float(r["restarts"]))
    assert got[bob] == before + 1 == want[bob]
    assert prom.value(f'notebookd_server_restarts_total{{user="{bob}",reason="requested"}}') == 0
    # its new start was timed: at least one successful spawn per user plus this one
    wait_for(lambda: prom.value('notebookd_server_spawn_duration_seconds_count{status="success"}')
             >= len(lab.names) + 1, 30, what="the new start in the spawn histogram")


def test_kernels_counted_while_a_kernel_runs(lab, prom):
    alice = lab.names[0]
    url, token = lab.rows()[alice]["url"], lab.token(alice)
    status, body, _ = http(url + "api/kernels", token, method="POST", body=b"{}")
    assert status == 201, body
    kernel = json.loads(body)["id"]
    try:
        got, want = at_the_same_moment(prom, lab, "notebookd_server_kernels", lambda r: float(r["kernels"] or 0),
                                       until=lambda got: got.get(alice) == 1)
        assert got[alice] == 1 == want[alice] and got[lab.names[1]] == 0
        table = lab.cli("status", alice).stdout.splitlines()
        assert table[0].split()[8:11] == ["KERNELS", "LAST", "ACTIVE"]
        assert table[1].split()[8] == "1"
        last = prom.value(f'notebookd_server_last_activity_timestamp_seconds{{user="{alice}"}}')
        assert last and abs(time.time() - last) < 600, "jupyter's last activity: the kernel start, just now"
        assert lab.rows()[alice]["last_activity"] == pytest.approx(last, abs=1e-3) or \
            lab.rows()[alice]["last_activity"] >= last
        assert prom.value('notebookd_active_users{period="24h"}') >= 1
    finally:
        assert http(url + f"api/kernels/{kernel}", token, method="DELETE")[0] == 204
    at_the_same_moment(prom, lab, "notebookd_server_kernels", lambda r: float(r["kernels"] or 0),
                       until=lambda got: got.get(alice) == 0)
    assert lab.rows()[alice]["kernels"] == 0


def test_probing_activity_does_not_count_as_activity(lab, prom):
    """Scrapes every second for a few seconds: the servers' last activity must not move with them."""
    bob = lab.names[1]
    first = wait_for(lambda: lab.rows()[bob]["last_activity"], 30, what="bob's last activity known")
    scraped = prom.value('timestamp(up{job="notebookd"})')
    # activity is probed at most every activity_interval (3 s here), whatever the scrape interval
    wait_for(lambda: prom.value('timestamp(up{job="notebookd"})') - scraped >= 7, 60, what="7 s of scrapes")
    assert lab.rows()[bob]["last_activity"] == first, "a probe of /api/status counted as activity"
    assert prom.value(f'notebookd_server_last_activity_timestamp_seconds{{user="{bob}"}}') == pytest.approx(first)


def test_failed_reload_shows_in_the_metrics(lab, prom):
    ok = 'notebookd_config_last_reload_success'
    assert prom.value(ok) == 1
    lab.write_config(lab.config_text + "bogus_key: 1\n")
    try:
        assert lab.cli("reload").returncode == 1
        wait_for(lambda: prom.value(ok) == 0, 30, what="the failed reload in prometheus")
        at = prom.value("notebookd_config_last_reload_timestamp_seconds")
        assert abs(at - time.time()) < 60
    finally:
        lab.write_config(lab.config_text)
        assert lab.cli("reload").returncode == 0
    wait_for(lambda: prom.value(ok) == 1, 30, what="the good reload in prometheus")


def test_textfile_is_valid_and_replaced_atomically(lab):
    path = lab.textfile
    wait_for(lambda: os.path.exists(path), 30, what="the textfile")
    inodes, texts = set(), []
    deadline = time.monotonic() + 4  # rewritten every second: several versions in this window
    while time.monotonic() < deadline:
        with open(path) as fh:
            inodes.add(os.fstat(fh.fileno()).st_ino)
            texts.append(fh.read())
    assert len(inodes) >= 2, "rewritten by rename, not in place"
    for text in texts:  # never a half-written file
        assert text.endswith("\n") and "notebookd_build_info" in text
        series = parsed(text)
        assert len(series["notebookd_server_state"]) == len(STATES) * len(lab.names)
    assert os.stat(path).st_mode & 0o777 == 0o644
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=texts[-1], capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if f != "notebookd.prom"]
    assert not leftovers, leftovers


def test_scrape_is_valid_exposition(lab):
    text = scrape(lab)
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    series = parsed(text)
    for name in ("notebookd_servers", "notebookd_server_state", "notebookd_server_restarts_total",
                 "notebookd_server_spawn_duration_seconds_bucket", "notebookd_server_memory_bytes",
                 "notebookd_server_cpu_seconds_total", "notebookd_server_kernels", "notebookd_server_connections",
                 "notebookd_health_check_failures_total", "notebookd_config_last_reload_success",
                 "notebookd_config_last_reload_timestamp_seconds", "notebookd_build_info", "notebookd_active_users"):
        assert name in series, name
    assert len(series["notebookd_server_restarts_total"]) == 4 * len(lab.names)
    assert {dict(k)["period"] for k in series["notebookd_active_users"]} == {"24h", "7d"}
    assert all(v > 0 for v in series["notebookd_server_cpu_seconds_total"].values())


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_endpoint_answers_only_get_metrics(lab):
    port = lab.metrics_port
    assert raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert raw(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    for request, code in ((b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", b"405"),
                          (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"405"),
                          (b"GET / HTTP/1.1\r\n\r\n", b"404"),
                          (b"GET /api/status HTTP/1.1\r\n\r\n", b"404"),
                          (b"GET /metrics/../x HTTP/1.1\r\n\r\n", b"404"),
                          (b"hello\r\n\r\n", b"400"),
                          (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431")):
        answer = raw(port, request)
        assert answer.split(b" ", 2)[1] == code, (request[:40], answer[:200])
        assert b"notebookd_" not in answer


def test_slow_clients_do_not_block_the_loop(lab):
    """Clients that trickle their request a byte at a time: the daemon answers status requests and other
    scrapes meanwhile (a blocked loop would hold them until the 5 s head timeout), and the slow ones are
    cut off once their time is up. Asked over the sockets directly: no interpreter start-up in the timing."""
    from notebookd import control

    port = lab.metrics_port
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    started, answered = time.monotonic(), 0
    try:
        i = 0
        while time.monotonic() - started < 3.5:  # within the head timeout, on however busy a machine
            for s in slow:
                s.send(b"GET /metrics HTTP/1.1\r\n"[i:i + 1])
            i += 1
            t0 = time.monotonic()
            assert control.request(os.path.join(lab.run_dir, "control.sock"), "status", timeout=10)["servers"]
            assert raw(port, b"GET /metrics HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
            assert time.monotonic() - t0 < 3, "status and a scrape beside slow clients"
            answered += 1
            time.sleep(0.2)
        assert answered >= 2
        for s in slow:  # each is cut off by the head timeout (5 s from connecting)
            s.settimeout(30)
            answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 30
    finally:
        for s in slow:
            s.close()


def test_readme_alert_rules_pass_promtool(workdir):
    with open(os.path.join(REPO, "README.md")) as fh:
        readme = fh.read()
    section = readme.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    rules = [b for b in blocks if "groups:" in b]
    assert len(rules) == 1, "one rules file in the Monitoring section"
    path = os.path.join(workdir, "notebookd-rules.yml")
    with open(path, "w") as fh:
        fh.write(rules[0])
    check = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 3 rules found" in check.stdout, check.stdout + check.stderr
    scrape_configs = [b for b in blocks if "scrape_configs:" in b]
    assert scrape_configs and "9750" in scrape_configs[0]
    import yaml

    assert {r["alert"] for g in yaml.safe_load(rules[0])["groups"] for r in g["rules"]} >= {
        "NotebookdServerCrashLoop", "NotebookdReloadFailed", "NotebookdServerMemoryNearLimit"}
