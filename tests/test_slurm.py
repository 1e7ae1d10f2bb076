"""backend: slurm against a real cluster of two nodes (tests/slurmcluster.py: Debian's munged, slurmctld and
two slurmd -N on this machine, one CPU each), plus the parsing and the state logic against Slurm's own
output, recorded from such a cluster, in the fast tier.

Each server's job asks for one CPU, so alice and bob run on different nodes, and a third server waits for
resources. The nodes have NodeAddr 127.0.0.1 and 127.0.0.2 (both loopback), and each server listens on its
own node's address only: a server looked for at the wrong node is refused. A real nginx (webclient.py) is
in front, its include kept by the daemon itself (proxy.file, proxy.reload).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import Daemon, as_user, free_ports, needs_root, wait_for
from labs import HostLab
from webclient import NGINX, start_nginx
from notebookd.backends import slurm
from notebookd.backends.managed import Observed


# ---- the fast tier: Slurm's own output, recorded from 22.05.8 with two nodes (tests/slurmcluster.py, nodes=2,
# jobs submitted by root with these names) ----

RECORDED_SQUEUE = """\
1|notebookd-erin|root|FAILED|NonZeroExitCode|n1|2026-12-01T19:39:26
3|notebookd-bob|root|PENDING|Resources||N/A
4|notebookd-carol|root|PENDING|Priority||N/A
5|notebookd-dave|root|PENDING|Priority||N/A
2|notebookd-alice|root|RUNNING|None|n2|2026-12-01T19:39:26
"""
RECORDED_BOTH_RUNNING = """\
1|notebookd-u1|root|CANCELLED|None|n1|2026-12-01T19:38:36
4|notebookd-u4|root|PENDING|Resources||N/A
2|notebookd-u2|root|RUNNING|None|n2|2026-12-01T19:38:36
3|notebookd-u3|root|RUNNING|None|n1|2026-12-01T19:38:39
"""
# `sinfo -h -N -o '%N|%o'` of that cluster prints 127.0.0.1 for both (its nodes share the machine); a cluster
# whose nodes have their own addresses prints them in the same form:
TWO_NODES_SINFO = "n1|10.0.0.11\nn2|10.0.0.12\n"


def test_squeue_and_sinfo_output_of_two_nodes():
    jobs = slurm.parse_squeue(RECORDED_SQUEUE)
    assert {j.id: (j.name, j.state, j.node) for j in jobs.values()} == {
        "1": ("notebookd-erin", "FAILED", "n1"), "3": ("notebookd-bob", "PENDING", ""),
        "4": ("notebookd-carol", "PENDING", ""), "5": ("notebookd-dave", "PENDING", ""),
        "2": ("notebookd-alice", "RUNNING", "n2")}
    assert jobs["3"].start is None and jobs["2"].start is not None
    assert {j.node for j in slurm.parse_squeue(RECORDED_BOTH_RUNNING).values() if j.state == "RUNNING"} == {"n1", "n2"}
    assert slurm.parse_sinfo_addresses(TWO_NODES_SINFO) == {"n1": "10.0.0.11", "n2": "10.0.0.12"}
    assert slurm.pending_reason("Resources") == "Slurm: waiting for resources"
    assert "Priority" in slurm.pending_reason("Priority")
    assert slurm.describe_end(jobs["1"]) == "job 1 failed (NonZeroExitCode) on n1"


def _spec(name: str, **slurm_keys):
    from dataclasses import replace

    from notebookd.config import Health, Logs, Restart, ServerSettings, Slurm
    from notebookd.model import Account, ServerSpec

    settings = replace(ServerSettings(), slurm=replace(Slurm(), **slurm_keys))
    return ServerSpec(Account(name, 5000, 5000, (), f"/home/{name}", "/bin/sh"), "0.0.0.0", 8801,
                      f"/user/{name}/", f"/home/{name}", settings, Restart(backoff_min=1, backoff_max=8,
                                                                            crashloop_after=3), Health(), Logs())


class RecordedCluster(slurm.SlurmManager):
    """The manager's logic over recorded squeue/sinfo answers instead of the commands (pure logic: the
    commands themselves are exercised against the real cluster below)."""

    def __init__(self, squeue: str):
        super().__init__("/run/x", tempfile.mkdtemp(), "/shared", env={})
        self.answers = {"squeue": squeue, "sinfo": TWO_NODES_SINFO}
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    async def _run(self, argv, stdin=None, spec=None):
        if argv[0] == "sbatch":
            self.submitted.append(spec.name)
            return "99\n"
        if argv[0] == "scancel":
            self.cancelled.append(argv[1])
            return ""
        return self.answers[argv[0]]


def test_jobs_on_two_nodes_map_onto_server_states():
    # the two recordings as one answer: the second one's job ids and names moved out of the first one's way
    second = "".join(f"1{line}\n".replace("|notebookd-u", "|notebookd-x") for line in RECORDED_BOTH_RUNNING.split())
    m = RecordedCluster(RECORDED_SQUEUE + second)
    m._save = lambda name: None
    jobs = {"erin": "1", "bob": "3", "carol": "4", "alice": "2", "x3": "13", "x1": "11", "gone": "77"}
    for name, jid in jobs.items():
        m.jobs[name] = jid
        m.defs[name] = (_spec(name), "", [], "d")
    seen = asyncio.run(m.observe(sorted(jobs)))
    assert (seen["alice"].state, seen["alice"].host, seen["alice"].pid) == ("up", "10.0.0.12", 2)
    assert (seen["x3"].state, seen["x3"].host) == ("up", "10.0.0.11")  # probed on its own node
    assert seen["bob"] == Observed("starting", error="Slurm: waiting for resources")
    assert seen["carol"].state == "starting" and "Priority" in seen["carol"].error
    # a failed job, one cancelled by someone else, one gone from slurmctld: backoff first, not resubmitted at once
    assert seen["erin"].state == seen["x1"].state == seen["gone"].state == "backoff"
    assert m.submitted == [] and m.cancelled == ["77"]  # the one slurmctld forgot: cancelled to be sure
    assert "failed" in m.last_end["erin"] and "cancelled" in m.last_end["x1"] and "gone" in m.last_end["gone"]
    # the delay passes: a new job (a resubmission, not a requeue, which would wait for cred_expire)
    m.backoff["erin"].at = 0
    m.answers["squeue"] = ""
    again = asyncio.run(m.observe(["erin"]))
    assert again["erin"].state == "starting" and m.submitted == ["erin"] and m.jobs["erin"] == "99"


def test_backoff_doubles_and_gives_up_to_the_slowest_pace():
    spec, b = _spec("a"), slurm.Backoff()
    delays = []
    for _ in range(4):
        b.failed(spec, 0.0)
        delays.append(b.at)
    assert delays == [1, 2, 8, 8] and b.gave_up(spec)


def test_the_job_script_and_sbatch_options_carry_no_secret():
    from notebookd import launch

    spec = _spec("alice", partition="gpu", cpus=4, mem="8G", gres="gpu:1", time="1-00:00:00",
                 extra=("--constraint=ib",))
    run = launch.Launch(("/usr/bin/python3", "-I", "-m", "jupyter_server", "--config=/s/c.json"),
                        {"JUPYTER_TOKEN_FILE": "/shared/servers/alice/token", "HOME": "/home/alice",
                         "NOTEBOOKD_SERVER": "alice@/shared"}, "/home/al ice", "alice@/shared")
    text = slurm.script(run, spec, "/shared/logs/alice/server.log", "/usr/bin/python3")
    assert "'/home/al ice'" in text and "JUPYTER_TOKEN_FILE=/shared/servers/alice/token" in text
    assert text.startswith("#!/bin/bash\n")
    args = slurm.sbatch_args(spec, "/shared/logs/alice/server.log")
    assert "--export=NONE" in args and "--job-name=notebookd-alice" in args
    for word in ("--partition=gpu", "--cpus-per-task=4", "--mem=8G", "--gres=gpu:1", "--time=1-00:00:00",
                 "--constraint=ib", "--output=/shared/logs/alice/server.log", "--nodes=1"):
        assert word in args
    with pytest.raises(Exception, match="line break"):
        slurm.script(launch.Launch(("a\nb",), {}, "/", "m"), spec, "/l", "/usr/bin/python3")


def test_the_jobs_log_rotator_cuts_at_line_boundaries_and_keeps_what_it_should(tmp_path):
    """The rotator the job runs on the node, run here by Debian's python3 on a pipe."""
    import sys

    log = tmp_path / "server.log"
    lines = b"".join(b"line %05d " % i + b"x" * (i % 200) + b"\n" for i in range(3000))
    proc = subprocess.run([sys.executable, "-I", "-c", slurm.ROTATOR, str(log), "65536", "2"], input=lines,
                          timeout=60)
    assert proc.returncode == 0
    files = [log, tmp_path / "server.log.1", tmp_path / "server.log.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in files]  # keep: 2, no .3
    kept = b"".join(p.read_bytes() for p in reversed(files))
    assert lines.endswith(kept)  # the newest lines, in order, none lost or split inside what is kept
    for p in files:
        data = p.read_bytes()
        assert data.endswith(b"\n") and len(data) < 65536 + 300


def test_slurm_config_keys(tmp_path):
    from notebookd import config
    from notebookd.yamlsource import ConfigError

    def load(text):
        path = tmp_path / "n.yaml"
        path.write_text(text)
        return config.load(_layout(str(path)))

    c = load("backend: slurm\nslurm: {partition: lab, cpus: 2, mem: 4G, shared_dir: /shared/nb}\n"
             "users:\n  alice: {slurm: {cpus: 8, gres: 'gpu:1'}}\n  bob: {}\n")
    alice, bob = c.user("alice").settings.slurm, c.user("bob").settings.slurm
    assert (alice.partition, alice.cpus, alice.mem, alice.gres) == ("lab", 8, "4G", "gpu:1")
    assert (bob.cpus, bob.gres, c.server.slurm.shared_dir) == (2, "", "/shared/nb")
    for bad, message in (("slurm: {extra: ['--uid=0']}", "set by notebookd"),
                         ("slurm: {extra: ['--export=ALL']}", "set by notebookd"),
                         ("slurm: {time: soon}", "time limit"),
                         ("slurm: {partition: 'a b'}", "Slurm value"),
                         ("slurm: {cpu: 2}", "did you mean 'cpus'"),
                         ("users:\n  alice: {slurm: {shared_dir: /x}}", "unknown key"),
                         ("backend: slurm\nserver: {start: on-demand}", "port is on a compute node"),
                         ("backend: slurm\nusers:\n  alice: {idle: {stop_after: 1h}}",
                          "idle stop of jobs is not done yet")):
        with pytest.raises(ConfigError, match=message):
            load(bad + "\n")


def test_time_limits_and_resubmit_before(tmp_path):
    from notebookd import config
    from notebookd.yamlsource import ConfigError

    assert [config.slurm_seconds(t) for t in ("30", "5:30", "2:00:00", "1-0", "1-2:03", "1-02:03:04", "", "UNLIMITED")] \
        == [1800, 330, 7200, 86400, 93780, 93784, None, None]
    path = tmp_path / "n.yaml"
    path.write_text("backend: slurm\nslurm: {time: '8:00:00', resubmit_before: 10m}\nusers:\n  alice: {}\n"
                    "  bob: {slurm: {time: 5, resubmit_before: 5m}}\n")
    with pytest.raises(ConfigError, match=r":5: .*resubmit_before \(300s\) must be shorter than the time limit"):
        config.load(_layout(str(path)))
    path.write_text("backend: slurm\nslurm: {time: '8:00:00', resubmit_before: 10m}\n")
    assert config.load(_layout(str(path))).server.slurm.resubmit_before == 600


def test_proxy_file_keys(tmp_path):
    from notebookd import config
    from notebookd.yamlsource import ConfigError

    path = tmp_path / "n.yaml"
    for text, message in (("proxy: {reload: [/usr/sbin/nginx, -s, reload]}", "reload goes with file"),
                          ("proxy: {file: /etc/nginx/conf.d/n.conf, reload: 'nginx -s reload'}", "absolute path"),
                          ("proxy: {file: conf.d/n.conf}", "absolute")):
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            config.load(_layout(str(path)))
    path.write_text("proxy: {file: /etc/nginx/conf.d/n.conf, reload: '/usr/sbin/nginx -s reload'}\n")
    c = config.load(_layout(str(path)))
    assert (c.proxy.file, c.proxy.reload) == ("/etc/nginx/conf.d/n.conf", ("/usr/sbin/nginx", "-s", "reload"))


def test_the_proxy_file_is_rewritten_only_when_the_text_changes_and_a_failed_reload_is_retried(tmp_path):
    from notebookd.proxyfile import ProxyFile

    target, runs = tmp_path / "notebookd.conf", tmp_path / "runs"
    state = {"text": "one\n", "reload": ("/bin/sh", "-c", f"echo x >> {runs}")}
    pf = ProxyFile(lambda: (str(target), state["reload"], state["text"]))

    async def rounds():
        assert await pf.update() and target.read_text() == "one\n"
        assert not await pf.update()  # the same text: no write, no reload
        state["text"] = "two\n"
        assert await pf.update() and target.read_text() == "two\n"
        assert runs.read_text() == "x\nx\n" and oct(target.stat().st_mode & 0o777) == "0o644"
        state["reload"] = ("/bin/sh", "-c", "echo 'nginx: [emerg] bad' >&2; exit 1")
        state["text"] = "three\n"
        assert not await pf.update() and pf.error == "proxy.reload: /bin/sh -c echo 'nginx: [emerg] bad' >&2; " \
            "exit 1: nginx: [emerg] bad"
        state["reload"] = ("/bin/true",)
        assert await pf.update() and pf.error is None  # the same text, tried again since its reload failed
    asyncio.run(rounds())


# `sinfo -h -N -o '%P|%c|%m'` of tests/slurmcluster.py's two nodes (22.05.8), and of a second partition
RECORDED_PARTITIONS = "lab*|1|1506\nlab*|1|1506\ngpu|32|257000\n"


def test_check_config_resources_against_the_partitions():
    parts = slurm.parse_partitions(RECORDED_PARTITIONS)
    assert parts == {"lab": (True, 1, 1506), "gpu": (False, 32, 257000)}
    ok = _spec("a", cpus=1, mem="1G").settings.slurm
    assert slurm.resource_problems("f:3: users.a", ok, parts) == []
    assert slurm.resource_problems("w", _spec("a", partition="gpu", cpus=32, mem="250G").settings.slurm, parts) == []
    assert slurm.resource_problems("f:3: users.a", _spec("a", cpus=4).settings.slurm, parts) == [
        "f:3: users.a: slurm.cpus: 4, but no node of partition lab has more than 1"]
    assert slurm.resource_problems("w", _spec("a", mem="2G").settings.slurm, parts) == [
        "w: slurm.mem: 2G, but no node of partition lab has more than 1506M"]
    assert "no partition 'nosuch' (sinfo knows: gpu, lab)" in \
        slurm.resource_problems("w", _spec("a", partition="nosuch").settings.slurm, parts)[0]
    assert "no default partition" in slurm.resource_problems("w", ok, {"gpu": (False, 2, 2)})[0]


def _layout(path: str):
    from notebookd import paths

    return paths.Layout(system=True, config=path, config_explicit=True, run_dir="/run/x", state_dir="/var/lib/x",
                        log_dir="/var/log/x")


# ---- the real cluster ----

@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from slurmcluster import Cluster

    base = tempfile.mkdtemp(prefix="nbt-slurm-")
    os.chmod(base, 0o755)
    c = Cluster(base, nodes=2).start()
    yield c
    c.stop()
    if not os.environ.get("NBT_KEEP"):
        c.remove()


class SlurmLab(HostLab):
    wait_timeout = 120.0

    def __init__(self, cluster, base, names, low, proxy_port):
        self.cluster = cluster
        super().__init__("slurm", base, names, low)
        self.proxy = f"http://127.0.0.1:{proxy_port}"
        self.proxy_file = os.path.join(base, "notebookd-nginx.conf")  # what webclient's nginx.conf includes
        nginx = [NGINX, "-c", os.path.join(base, "nginx.conf"), "-e", os.path.join(base, "nginx-error.log"),
                 "-g", f"pid {base}/nginx.pid;", "-s", "reload"]
        # one CPU and a little memory each: two servers fill the two 1-CPU nodes
        self.extra = (f"slurm: {{cpus: 1, mem: 400M}}\nproxy: {{listen: '127.0.0.1:{proxy_port}', "
                      f"file: {self.proxy_file}, reload: {json.dumps(nginx)}}}")
        self.daemon = Daemon(base, self._config(), extra_env={"SLURM_CONF": cluster.conf})

    def via_nginx(self, name: str, path: str = "api/kernels") -> int:
        return self.http(f"{self.proxy}/user/{name}/{path}", self.token(name))

    def address(self, name: str) -> str:
        return self.cluster.address(self.job(name)["nodes"])

    def _config(self) -> str:
        # health checks slower than the module default: a killed server's job must end (FAILED) and be
        # seen before notebookd would restart the silent server itself (a cancel), even on a busy machine
        return super()._config().replace("health: {interval: 2s, timeout: 5s, failures: 2}",
                                         "health: {interval: 5s, timeout: 5s, failures: 3}")

    def job(self, name: str) -> dict:
        return next(j for j in self.cluster.jobs() if j["id"] == str(self.rows()[name]["pid"]))


@pytest.fixture(scope="module")
def lab(cluster, users):
    names = {"alice": users("slalice").pw_name, "bob": users("slbob").pw_name}
    base = os.path.join(cluster.base, "lab")
    os.makedirs(base, mode=0o755)
    low = free_ports(1, 27000)[0]
    proxy_port = free_ports(1, low + 40)[0]  # past the servers' ports (low..low+20) and the metrics port
    lab = SlurmLab(cluster, base, names, low, proxy_port)
    # nginx first, with nothing in its include: the daemon writes it and reloads nginx itself
    nginx = start_nginx(base, "")
    try:
        lab.start()
        yield lab
        lab.stop()
        for user in names.values():
            wait_for(lambda: not lab.user_pids(user), 60, what=f"{user}'s processes gone")
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)


@needs_root
def test_servers_are_jobs_of_their_users_on_two_nodes_and_answer_with_their_token(lab):
    assert {lab.job(n)["nodes"] for n in lab.names.values()} == {"n1", "n2"}
    for name in lab.names.values():
        row = lab.rows()[name]
        job = lab.job(name)
        assert (job["name"], job["user"], job["state"]) == (f"notebookd-{name}", name, "RUNNING")
        assert row["local_url"].startswith(f"http://{lab.address(name)}:{row['port']}/user/{name}/")
        assert lab.http(row["local_url"] + "api/kernels", lab.token(name)) == 200
        assert lab.http(row["local_url"] + "api/kernels") == 403
        server = lab.pid_of(name, "jupyter_server")
        assert server and lab.proc_user(server) == name
        # submitted by the user: the job's UserId is theirs, and it is no root-submitted job
        shown = lab.cluster.scontrol("show", "job", job["id"]).stdout
        assert f"UserId={name}(" in shown
    urls = lab.cli("url", "--local").stdout
    assert all(f"{lab.address(n)}:{lab.rows()[n]['port']}" in urls for n in lab.names.values())
    assert all(f"{lab.proxy}/user/{n}/" in lab.cli("url", n).stdout for n in lab.names.values())  # nginx's
    nginx = lab.cli("render", "nginx").stdout
    assert all(f"proxy_pass http://{lab.address(n)}:{lab.rows()[n]['port']}" in nginx for n in lab.names.values())
    # each listens on its own node's address only: the other node's address has nothing there
    for name in lab.names.values():
        other = ({"127.0.0.1", "127.0.0.2"} - {lab.address(name)}).pop()
        assert lab.http(f"http://{other}:{lab.rows()[name]['port']}/user/{name}/api") == 0
        # the daemon wrote nginx's include itself, and nginx routes each user to their node
        wait_for(lambda: lab.via_nginx(name) == 200, 60, what=f"{name} through nginx")
    assert open(lab.proxy_file).read() == nginx
    # status asks each server's activity at its node (kernels, last activity: None when not known)
    wait_for(lambda: all(lab.rows()[n]["kernels"] is not None and lab.rows()[n]["last_activity"]
                         for n in lab.names.values()), 60, what="activity of both servers")


@needs_root
def test_no_token_in_scontrol_ps_the_batch_script_or_readable_files(lab):
    for name in lab.names.values():
        token = lab.token(name)
        jid = lab.job(name)["id"]
        shown = lab.cluster.scontrol("show", "job", "-d", jid).stdout
        assert token not in shown
        script = lab.cluster.scontrol("write", "batch_script", jid, "-").stdout
        assert "jupyter_server" in script and token not in script
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        assert token not in ps
        for pid in lab.user_pids(name):
            assert token not in json.dumps(lab.proc_env(pid))
        for path, mode, text in lab.secret_places():
            if token in text:
                assert mode & 0o077 == 0, path


@needs_root
def test_logs_are_the_users_own_and_follow_the_job(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    out = lab.cli("logs", alice, user=alice)
    assert out.returncode == 0 and "Jupyter Server" in out.stdout, out.stderr
    path = os.path.join(lab.base, "run", "logs", alice, "server.log")
    st, dst = os.stat(path), os.stat(os.path.dirname(path))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(alice).pw_uid, 0o600)
    assert (dst.st_uid, stat.S_IMODE(dst.st_mode)) == (pwd.getpwnam(alice).pw_uid, 0o700)
    assert lab.cli("logs", alice, user=bob).returncode != 0
    # -f follows the file the job writes: a request with a wrong token shows up in it
    follow = subprocess.Popen([sys.executable, "-m", "notebookd", "logs", "-f", alice], env=lab.daemon.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, **as_user(alice))
    try:
        os.set_blocking(follow.stdout.fileno(), False)
        seen = b""

        def marker_seen():
            nonlocal seen
            lab.http(lab.rows()[alice]["local_url"] + "api/contents/follow-me-please", "wrong-token")
            seen += follow.stdout.read() or b""
            return b"follow-me-please" in seen
        wait_for(marker_seen, 60, interval=0.5, what="the request in logs -f")
    finally:
        follow.kill()
        follow.wait()


@needs_root
def test_kill_9_of_the_server_brings_it_back_on_its_port_without_its_kernel(lab):
    bob = lab.names["bob"]
    row = lab.rows()[bob]
    status = lab.http(row["local_url"] + "api/kernels", lab.token(bob), method="POST", body=b"{}")
    assert status == 201, lab.last_http_body
    kernel_id = json.loads(lab.last_http_body)["id"]
    kernel = wait_for(lambda: lab.pid_of(bob, kernel_id), 60, what="the kernel process")
    lab.kill(lab.pid_of(bob, "jupyter_server"))
    again = lab.wait_replaced(bob, row["pid"])  # a new job (its id is the PID column)
    assert again["port"] == row["port"] and again["restarts"] >= 1
    assert lab.http(again["local_url"] + "api/kernels", lab.token(bob)) == 200
    assert kernel not in lab.user_pids(bob)  # ended by the job's wrapper, on the node
    old = next(j for j in lab.cluster.jobs() if j["id"] == str(row["pid"]))
    assert old["state"] == "FAILED"


@needs_root
def test_pending_with_slurms_reason_when_the_partition_is_full_then_removed_by_a_reload(lab, users):
    carol = users("slcarol").pw_name
    entries = dict(lab.entries)
    lab.set_users({**entries, carol: "{}"})
    assert lab.reload().returncode == 0
    # "waiting to be scheduled" (reason None) until the scheduler has looked at it, then Resources
    row = wait_for(lambda: (r := lab.rows().get(carol)) and "waiting for resources" in (r["last_error"] or "")
                   and r, 60, what="carol pending for resources")
    assert row["state"] == "starting"
    out = lab.cli("status")
    assert carol in out.stdout and "waiting for resources" in out.stdout
    jid = next(j["id"] for j in lab.cluster.jobs() if j["name"] == f"notebookd-{carol}")
    lab.set_users(entries)
    assert lab.reload().returncode == 0
    wait_for(lambda: carol not in lab.rows(), 60, what="carol gone")
    assert next(j for j in lab.cluster.jobs() if j["id"] == jid)["state"] == "CANCELLED"
    assert all(r["state"] == "running" for r in lab.rows().values())


@needs_root
def test_a_job_sbatch_refuses_is_a_backoff_with_slurms_words(lab, users):
    dave = users("sldave").pw_name
    entries = dict(lab.entries)
    lab.set_users({**entries, dave: "{slurm: {partition: nosuch}}"})
    assert lab.reload().returncode == 0
    row = wait_for(lambda: (r := lab.rows().get(dave)) and r["state"] == "backoff" and r, 60, what="dave backoff")
    assert "invalid partition" in row["last_error"].lower(), row
    lab.set_users(entries)
    assert lab.reload().returncode == 0
    wait_for(lambda: dave not in lab.rows(), 60, what="dave gone")


@needs_root
def test_stop_cancels_the_job_and_leaves_no_process(lab):
    alice = lab.names["alice"]
    row = lab.rows()[alice]
    status = lab.http(row["local_url"] + "api/kernels", lab.token(alice), method="POST", body=b"{}")
    assert status == 201
    wait_for(lambda: len(lab.user_pids(alice)) >= 2, 60, what="a kernel")
    assert lab.cli("stop", alice).returncode == 0
    assert lab.rows()[alice]["state"] == "stopped"
    assert lab.user_pids(alice) == []
    assert next(j for j in lab.cluster.jobs() if j["id"] == str(row["pid"]))["state"] == "CANCELLED"
    assert lab.cli("start", alice).returncode == 0
    lab.wait_state(alice, "running")


@needs_root
def test_a_new_daemon_adopts_the_jobs(lab):
    before = {n: lab.rows()[n]["pid"] for n in lab.names.values()}
    lab.restart_keeping_servers()
    lab.wait_all_running()
    assert {n: lab.rows()[n]["pid"] for n in lab.names.values()} == before
    assert "adopting Slurm job" in lab.daemon_log()


def _other_node(lab, name: str) -> str:
    return next(n for n in lab.cluster.node_names if n != lab.job(name)["nodes"])


@needs_root
def test_a_job_resubmitted_onto_the_other_node_is_routed_there_by_nginx_without_admin_action(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    assert lab.via_nginx(alice) == 200
    node, other = lab.job(alice)["nodes"], _other_node(lab, alice)
    # room on the other node; alice's own node drained (maintenance): her next job can only go there
    assert lab.cli("stop", bob).returncode == 0
    assert lab.cluster.scontrol("update", f"NodeName={node}", "State=DRAIN", "Reason=nbt-test").returncode == 0
    try:
        row = lab.rows()[alice]
        lab.kill(lab.pid_of(alice, "jupyter_server"))  # it fails; notebookd submits a new job
        again = lab.wait_replaced(alice, row["pid"])
        assert lab.job(alice)["nodes"] == other and again["port"] == row["port"]
        # nobody rendered or reloaded anything: the daemon did, and nginx now proxies to the other node
        wait_for(lambda: lab.via_nginx(alice) == 200, 60, what="nginx routing alice to her new node")
        text = open(lab.proxy_file).read()
        assert f"proxy_pass http://{lab.cluster.address(other)}:{row['port']};" in text
        assert f"proxy_pass http://{lab.cluster.address(node)}:{row['port']};" not in text
    finally:
        lab.cluster.scontrol("update", f"NodeName={node}", "State=RESUME")
        assert lab.cli("start", bob).returncode == 0
    lab.wait_all_running()
    wait_for(lambda: lab.via_nginx(bob) == 200, 60, what="bob through nginx again")


@needs_root
def test_a_job_near_its_time_limit_hands_over_to_a_new_job_and_the_url_keeps_working(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    entries = dict(lab.entries)
    token = lab.token(alice)
    assert lab.cli("stop", bob).returncode == 0  # the other node free for the successor
    # a 2-minute limit, resubmitted 115 s before it: the successor comes about 5 s after the job starts
    lab.set_users({**entries, alice: "{slurm: {time: 2, resubmit_before: 115s}}"})
    try:
        assert lab.reload().returncode == 0
        first = wait_for(lambda: (r := lab.rows()[alice])["state"] == "running" and
                         lab.job(alice)["state"] == "RUNNING" and "2:00" in lab.cluster.command(
                             "squeue", "-h", "-j", str(r["pid"]), "-o", "%l").stdout and r, 120,
                         what="alice running in a job with a 2-minute limit")
        restarts = first["restarts"]
        wait_for(lambda: lab.via_nginx(alice) == 200, 60, what="nginx routing alice to her job's node")
        failed = []

        def handed_over():
            status = lab.via_nginx(alice)
            if status != 200:
                failed.append((status, lab.rows()[alice]["pid"], time.strftime("%T")))
            row = lab.rows()[alice]
            return row["pid"] != first["pid"] and row
        row = wait_for(handed_over, 150, interval=0.3, what="a new job taking over from the first")
        old = lambda: next(j for j in lab.cluster.jobs() if j["id"] == str(first["pid"]))  # noqa: E731
        wait_for(lambda: handed_over() and old()["state"] == "CANCELLED", 60, interval=0.3,
                 what="the first job cancelled before its limit")
        assert failed == [], failed  # through nginx the URL answered all along
        assert row["state"] == "running" and row["restarts"] == restarts  # nothing crashed
        assert lab.token(alice) == token
        assert lab.job(alice)["nodes"] != next(j for j in lab.cluster.jobs() if j["id"] == str(first["pid"]))["nodes"]
        assert "is cancelled before its time limit" in lab.daemon_log()
    finally:
        lab.set_users(entries)
        assert lab.reload().returncode == 0
        assert lab.cli("start", bob).returncode == 0
    lab.wait_all_running()


@needs_root
def test_check_config_finds_the_cluster_and_names_what_it_cannot_give(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    out = lab.cli("check-config")
    assert out.returncode == 0, out.stdout + out.stderr
    path = os.path.join(lab.base, "check.yaml")
    with open(path, "w") as fh:
        fh.write(f"backend: slurm\nlisten: {{ports: {lab.low}-{lab.low + 20}}}\nslurm: {{mem: 400M}}\nusers:\n"
                 f"  {alice}: {{slurm: {{cpus: 64, mem: 100G}}}}\n  {bob}: {{slurm: {{partition: nosuch}}}}\n")
    out = subprocess.run([sys.executable, "-m", "notebookd", "--config", path, "check-config"], env=lab.daemon.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [x.removeprefix("notebookd: ") for x in (out.stdout + out.stderr).splitlines()]
    assert f"{path}:5: users.{alice}: slurm.cpus: 64, but no node of partition lab has more than 1" in lines, lines
    assert any(f"{path}:5: users.{alice}: slurm.mem: 100G, but no node of partition lab has more than" in x
               for x in lines), lines
    assert f"{path}:6: users.{bob}: slurm.partition: no partition 'nosuch' (sinfo knows: lab)" in lines, lines
    env = {**lab.daemon.env, "SLURM_CONF": "/nonexistent/slurm.conf"}
    out = subprocess.run([sys.executable, "-m", "notebookd", "--config", path, "check-config"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert any(x.startswith(f"notebookd: {path}: backend slurm: sinfo: ") for x in out.stderr.splitlines()), out.stderr
