"""backend: slurm — each user's server is a Slurm job, submitted as that user, kept alive by notebookd.

The job runs the server command `launch.prepare` builds for every backend, on the user's port, under a
small bash wrapper (`script()`): the server's output goes through a line-boundary rotator into the user's
log, and when the server ends (a crash, or scancel's SIGTERM) the wrapper ends every process that carries
the job's id in its environment (NOTEBOOKD_JOB) before the job ends, so orphaned kernels die with it even
under proctrack/linuxproc. The server listens on its node's NodeAddr (read by the job with scontrol).

Submitting: `sbatch --parsable --export=NONE ...` with the script on stdin, run with the user's uid,
gid and groups (set between fork and exec, as the native backend spawns servers): the job is the user's
own, exactly as if they had submitted it (associations, limits and accounting are theirs). Nothing in
sbatch's argv, the script or the job's environment is secret: the token and password hash are 0400 files
of the user in `<shared_dir>/servers/USER/` (root-owned 0750 root:group), which the server reads itself.

Watching: one `squeue` with parsable output for all our jobs every `poll` seconds (22.05's `--json`
ignores filters), matched by job id. The manager restarts failed jobs itself, with backoff, by
submitting a new job (a requeue would wait for `cred_expire`). Job ids are kept in
`<state_dir>/slurm/USER.json`, so a new daemon adopts running jobs.
"""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import dataclass

from notebookd import launch
from notebookd.access import Access
from notebookd.backends.base import BackendError
from notebookd.backends.managed import ManagedBackend, Observed
from notebookd.backends.tools import run_tool
from notebookd.fsutil import ensure_dir, write_atomic
from notebookd.model import ServerSpec
from notebookd.probe import http_status
from notebookd.tokens import TokenStore

log = logging.getLogger("notebookd")

JOB_PREFIX = "notebookd-"
# squeue's %T: states in which the job still holds (or waits for) its allocation
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED",
           "STOPPED"}
UP = {"RUNNING", "RESIZING", "SIGNALING", "STAGE_OUT"}
ENDING = {"COMPLETING"}
# Slurm's pending reasons (squeue %r) in words; others are shown as Slurm spells them
REASONS = {
    "Resources": "waiting for resources",
    "Priority": "waiting for resources (Priority: other jobs go first)",
    "None": "waiting to be scheduled",
    "BeginTime": "waiting for its start time",
    "Dependency": "waiting for a dependency",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "the requested node is not available",
    "QOSMaxJobsPerUserLimit": "the QOS allows no more jobs for this user",
    "AssocMaxJobsLimit": "the account allows no more jobs",
    "JobHeldUser": "held by its user (scontrol release)",
    "JobHeldAdmin": "held by an admin (scontrol release)",
}
FIELDS = "%i|%j|%u|%T|%r|%N|%S|%e"  # %e: when a running job reaches its time limit
COMMAND_TIMEOUT = 60.0
# a job replaced before its time limit is cancelled this long after its successor took over: nginx, rendered
# again at once (proxy.file), has reloaded by then, so no request still goes to the old node
HANDOVER_GRACE = 10.0

# Run by the server's interpreter on the node: the server's output to the user's log, a new file once the
# current one has reached max_size, always at a line boundary; keeps max_size*keep bytes at most. It ignores
# SIGTERM so the server's last words (scancel signals every process of the job) still reach the file.
ROTATOR = """\
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
path, limit, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = open(path, "ab", buffering=0)
size = out.tell()
for line in sys.stdin.buffer:
    out.write(line)
    size += len(line)
    if size >= limit and line.endswith(b"\\n"):
        out.close()
        for i in range(keep - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        os.replace(path, path + ".1")
        out, size = open(path, "ab", buffering=0), 0
"""


def job_name(name: str) -> str:
    return JOB_PREFIX + name


def _q(word: str) -> str:
    if "\n" in word or "\0" in word:
        raise BackendError(f"a line break cannot go into the job script: {word!r}")
    return shlex.quote(word)


def script(run: launch.Launch, spec: ServerSpec, log_file: str, python: str) -> str:
    """The batch script: no secret in it (the token is a file the server reads; see the module doc)."""
    env = " ".join(_q(f"{k}={v}") for k, v in sorted(run.env.items()))
    # the server listens on its node's NodeAddr (what notebookd probes and nginx proxies to), unless the
    # admin asked for every address (listen.ip: 0.0.0.0 or ::)
    node_ip = spec.ip not in ("0.0.0.0", "::")
    argv = " ".join(_q(w[:-len(spec.ip)]) + '"$ip"' if node_ip and w.startswith("--") and w.endswith(f".ip={spec.ip}")
                    else _q(w) for w in run.argv)
    return f"""\
#!/bin/bash
# Written by notebookd: {spec.name}'s jupyter server as a Slurm job. No secret in here: the server reads its
# token (and password hash) from files only {spec.name} can read.
set -o pipefail
ip=$(scontrol show node -o "$SLURMD_NODENAME" 2>/dev/null | grep -o ' NodeAddr=[^ ]*' | cut -d= -f2)
if [ -z "$ip" ]; then
    echo "[notebookd] cannot read the NodeAddr of node $SLURMD_NODENAME (scontrol); listening on {spec.ip}"
    ip={_q(spec.ip)}
fi
sweep() {{
    # every process of this job's server that is still there (kernels start their own sessions, and
    # proctrack/linuxproc does not follow a kernel whose server died), known by the job id in its
    # environment: a successor on the same machine (resubmit_before) is left alone. One grep over every
    # environ it may read, as a fork per process would take seconds on a busy node
    local f p pass
    for pass in 1 2; do
        for f in $(grep -lzxF -- "NOTEBOOKD_JOB=$SLURM_JOB_ID" /proc/[0-9]*/environ 2>/dev/null); do
            p=${{f#/proc/}}
            p=${{p%/environ}}
            [ "$p" = "$$" ] || [ "$p" = "$BASHPID" ] || kill -KILL "$p" 2>/dev/null
        done
    done
}}
server() {{
    cd {_q(run.cwd)} || return 1
    env -i {env} NOTEBOOKD_JOB="$SLURM_JOB_ID" {argv} &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null' TERM INT
    while :; do
        wait $pid
        rc=$?
        kill -0 $pid 2>/dev/null || break
    done
    sweep
    echo "[notebookd] server exited with status $rc on $(hostname) (job $SLURM_JOB_ID)"
    return $rc
}}
trap true TERM INT
server 2>&1 | {_q(python)} -I -c {shlex.quote(ROTATOR)} {_q(log_file)} {spec.logs.max_size} {spec.logs.keep}
"""


def sbatch_args(spec: ServerSpec, log_file: str) -> list[str]:
    s = spec.settings.slurm
    args = [f"--job-name={job_name(spec.name)}", "--export=NONE", "--nodes=1", "--ntasks=1",
            f"--chdir={spec.root_dir}", f"--output={log_file}", "--open-mode=append", "--no-requeue",
            ]
    for flag, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos), ("time", s.time),
                        ("mem", s.mem), ("gres", s.gres)):
        if value:
            args.append(f"--{flag}={value}")
    if s.cpus is not None:
        args.append(f"--cpus-per-task={s.cpus}")
    return args + list(s.extra)


@dataclass
class Job:
    id: str
    name: str
    user: str
    state: str
    reason: str
    node: str
    start: float | None
    end: float | None = None  # a running job's time limit (None: none, or not known)


def parse_squeue(text: str) -> dict[str, Job]:
    """`squeue -h -o FIELDS` lines → jobs by id (without %e too, as recorded before it was asked)."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) not in (7, 8):
            continue
        jid, name, user, state, reason, node, start = parts[:7]
        end = _time(parts[7]) if len(parts) == 8 else None
        jobs[jid] = Job(jid, name, user, state.split()[0], reason, node, _time(start), end)
    return jobs


def parse_sinfo_addresses(text: str) -> dict[str, str]:
    """`sinfo -h -N -o '%N|%o'` (node name, NodeAddr) → {node: address}."""
    out = {}
    for line in text.splitlines():
        if "|" in line:
            node, addr = line.split("|", 1)
            out[node.strip()] = addr.strip() or node.strip()
    return out


def _time(text: str) -> float | None:
    try:  # slurmctld prints local time
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def pending_reason(reason: str) -> str:
    return "Slurm: " + REASONS.get(reason, reason)


def describe_end(job: Job) -> str:
    words = {"FAILED": "failed", "NODE_FAIL": "its node failed", "PREEMPTED": "preempted", "TIMEOUT":
             "reached its time limit", "CANCELLED": "cancelled", "COMPLETED": "ended", "OUT_OF_MEMORY":
             "ran out of memory", "BOOT_FAIL": "its node failed to boot", "DEADLINE": "missed its deadline"}
    text = f"job {job.id} {words.get(job.state, job.state)}"
    if job.reason and job.reason != "None":
        text += f" ({job.reason})"
    return text + (f" on {job.node}" if job.node else "")


class Backoff:
    """Failed jobs in a row → the delay before the next submission (the native backend's rule)."""

    def __init__(self):
        self.failures = 0
        self.at: float | None = None  # when the next submission is due

    def failed(self, spec: ServerSpec, now: float) -> None:
        self.failures += 1
        r = spec.restart
        delay = r.backoff_max if self.failures >= r.crashloop_after else \
            min(r.backoff_max, r.backoff_min * 2 ** (self.failures - 1))
        self.at = now + delay

    def gave_up(self, spec: ServerSpec) -> bool:
        return self.failures >= spec.restart.crashloop_after


class SlurmManager:
    name = "slurm"
    local = False  # the server's processes run on a compute node: the job's wrapper ends them there

    def __init__(self, run_dir: str, state_dir: str, shared_dir: str, env: dict[str, str] | None = None):
        self.run_dir = run_dir
        self.shared_dir = shared_dir or run_dir
        self.records_dir = os.path.join(state_dir, "slurm")
        # the commands' environment: SLURM_CONF (a cluster config elsewhere than /etc/slurm) is passed on
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        for key in ("SLURM_CONF",):
            if key in (env if env is not None else os.environ):
                self.env[key] = (env if env is not None else os.environ)[key]
        self.jobs: dict[str, str] = {}  # user -> current job id
        self.defs: dict[str, tuple[ServerSpec, str, list[str], str]] = {}  # user -> spec, script, args, digest
        self.digests: dict[str, str] = {}  # user -> digest of the definition the current job was submitted with
        self.stopping: set[str] = set()
        self.backoff: dict[str, Backoff] = {}
        self.last_end: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.ran_since: dict[str, float] = {}
        self.successors: dict[str, str] = {}  # user -> the job that takes over before the current one's limit
        self.no_handover: set[str] = set()  # jobs whose successor ended before it answered: they run to their limit
        self.retiring: dict[str, float] = {}  # replaced job -> when to cancel it
        self._look = asyncio.Lock()

    # -- commands --
    async def _run(self, argv: list[str], stdin: bytes | None = None, spec: ServerSpec | None = None) -> str:
        path = shutil.which(argv[0], path=self.env["PATH"]) or argv[0]
        kw = {}
        env = dict(self.env)
        if spec is not None:  # as the user: set in C between fork and exec
            acc = spec.account
            kw = {"user": acc.uid, "group": acc.gid, "extra_groups": list(acc.groups), "umask": 0o077}
            env.update(HOME=acc.home, USER=acc.name, LOGNAME=acc.name)
        return await run_tool([path, *argv[1:]], env=env, timeout=COMMAND_TIMEOUT, input=stdin, what=argv[0], **kw)

    async def squeue(self, names: list[str]) -> dict[str, Job]:
        if not names:
            return {}
        out = await self._run(["squeue", "-h", "-a", "--states=all", "--name=" + ",".join(map(job_name, names)),
                               "-o", FIELDS])
        return parse_squeue(out)

    async def _address(self, node: str) -> str:
        if node not in self.addresses:
            try:
                self.addresses.update(parse_sinfo_addresses(await self._run(["sinfo", "-h", "-N", "-o", "%N|%o"])))
            except BackendError as exc:
                log.warning("slurm: %s", exc)
        return self.addresses.get(node, node)

    # -- records: the job id of each user's server, for the next daemon --
    def _record_path(self, name: str) -> str:
        return os.path.join(self.records_dir, name + ".json")

    def _save(self, name: str) -> None:
        ensure_dir(self.records_dir, 0o700)
        data = {"job": self.jobs[name], "digest": self.digests.get(name, ""), "next": self.successors.get(name)}
        write_atomic(self._record_path(name), json.dumps(data).encode(), 0o600)

    def _drop(self, name: str) -> None:
        self.jobs.pop(name, None)
        self.digests.pop(name, None)
        try:
            os.unlink(self._record_path(name))
        except FileNotFoundError:
            pass

    # -- the Manager contract --
    async def open(self) -> set[str]:
        await self._run(["squeue", "--version"])  # the client is there (and SLURM_CONF readable)
        found: dict[str, tuple[str, str]] = {}
        if os.path.isdir(self.records_dir):
            for entry in sorted(os.listdir(self.records_dir)):
                if not entry.endswith(".json"):
                    continue
                try:
                    with open(os.path.join(self.records_dir, entry)) as fh:
                        data = json.load(fh)
                    found[entry[:-5]] = (str(data["job"]), str(data.get("digest", "")))
                    if data.get("next"):  # a handover under way when the last daemon went: begun again
                        await self._cancel_quietly(str(data["next"]))
                except (OSError, ValueError, KeyError):
                    os.unlink(os.path.join(self.records_dir, entry))
        jobs = await self.squeue(sorted(found))
        alive = set()
        for name, (jid, digest) in found.items():
            job = jobs.get(jid)
            if job is not None and job.user == name and job.name == job_name(name) and \
                    job.state in WAITING | UP:
                self.jobs[name], self.digests[name] = jid, digest
                alive.add(name)
                log.info("%s: adopting Slurm job %s (%s)", name, jid, job.state)
            else:
                self._drop(name)
        return alive

    async def install(self, spec: ServerSpec, access: Access) -> bool:
        # root_dir is entered on the node, as the user (--chdir, and the script's cd)
        run = await launch.prepare(spec, self.shared_dir, access, check_root_dir=False)
        log_file = self.log_path(spec.name, spec)
        python = run.python or "/usr/bin/python3"
        text = script(run, spec, log_file, python)
        args = sbatch_args(spec, log_file)
        digest = hashlib.sha256(json.dumps([text, args]).encode()).hexdigest()
        old = self.defs.get(spec.name)
        self.defs[spec.name] = (spec, text, args, digest)
        current = self.digests.get(spec.name)
        if spec.name in self.jobs and current is not None:
            return current != digest
        return old is not None and old[3] != digest

    def _log_dir(self, name: str, spec: ServerSpec | None) -> str:
        """`<shared_dir>/logs/USER/`: the user's own 0700 directory (the job writes there as the user)."""
        top = os.path.join(self.shared_dir, "logs")
        path = os.path.join(top, name)
        if spec is not None:
            ensure_dir(top, 0o755)
            ensure_dir(path, 0o700, spec.account.uid, spec.account.gid)
        return path

    async def uninstall(self, name: str) -> None:
        self.defs.pop(name, None)
        self.backoff.pop(name, None)
        self._drop(name)
        self.successors.pop(name, None)

    async def start(self, name: str) -> None:
        """Submit a job unless one is pending or running."""
        async with self._look:
            if name in self.jobs:
                jobs = await self.squeue([name])
                job = jobs.get(self.jobs[name])
                if job is not None and job.state in WAITING | UP:
                    return
            if name in self.backoff:  # asked now: no more waiting (the failure count stays until a good run)
                self.backoff[name].at = None
            await self._submit(name)

    async def _sbatch(self, name: str, *more: str) -> str:
        """Submit the user's job (as the user); its id."""
        if name not in self.defs:
            raise BackendError(f"{name}: no job definition (not installed)")
        spec, text, args, digest = self.defs[name]
        self._log_dir(name, spec)
        out = await self._run(["sbatch", "--parsable", *args, *more], stdin=text.encode(), spec=spec)
        jid = out.strip().split(";")[0]
        if not jid.isdigit():
            raise BackendError(f"sbatch: unexpected answer {out.strip()!r}")
        return jid

    async def _submit(self, name: str) -> None:
        jid = await self._sbatch(name)
        self.jobs[name], self.digests[name] = jid, self.defs[name][3]
        self.last_end.pop(name, None)
        self._save(name)
        log.info("%s: submitted Slurm job %s", name, jid)

    async def stop(self, name: str) -> None:
        """scancel, then wait until the job has left its node (its wrapper ends the kernels first)."""
        jid = self.jobs.get(name)
        self.backoff.pop(name, None)
        if jid is None:
            return
        self.stopping.add(name)
        ids = [jid] + [j for j in (self.successors.get(name),) if j]
        try:
            await self._run(["scancel", *ids])
            deadline = time.monotonic() + 300  # slurmctld's KillWait (30 s by default), then SIGKILL
            while time.monotonic() < deadline:
                jobs = await self.squeue([name])
                if all(j not in jobs or jobs[j].state not in WAITING | UP | ENDING for j in ids):
                    break
                await asyncio.sleep(0.25)
            else:
                raise BackendError(f"job {jid} still there 300s after scancel")
            self.successors.pop(name, None)
            self._drop(name)
        finally:
            self.stopping.discard(name)

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        async with self._look:
            jobs = await self.squeue(names)
            now = time.time()
            for jid, at in list(self.retiring.items()):
                if now >= at:
                    del self.retiring[jid]
                    await self._cancel_quietly(jid)
            seen = {}
            for name in names:
                seen[name] = await self._observe_one(name, jobs, now)
            return seen

    async def _observe_one(self, name: str, jobs: dict[str, Job], now: float) -> Observed:
        jid = self.jobs.get(name)
        job = jobs.get(jid) if jid else None
        backoff = self.backoff.get(name)
        if job is not None and job.state in WAITING:
            return Observed("starting", error=pending_reason(job.reason) if job.state != "CONFIGURING" else
                            f"Slurm: job {job.id} is starting on {job.node}")
        if job is not None and job.state in UP:
            moved = await self._handover(name, job, jobs, now)
            if moved is not None:
                return moved
            self.ran_since.setdefault(name, now)
            spec = spec_of(self, name)
            if backoff and spec and now - self.ran_since[name] >= spec.restart.reset_after:
                self.backoff.pop(name, None)  # a good run clears the failure count
            return Observed("up", pid=int(job.id), since=job.start, host=await self._address(job.node))
        if job is not None and job.state in ENDING:
            return Observed("stopping")
        if name in self.stopping:
            return Observed("stopping")
        self.ran_since.pop(name, None)
        if jid is not None and name in self.successors:  # it ended (its limit) before the handover was done
            nxt = jobs.get(self.successors.pop(name))
            if nxt is not None and nxt.state in UP:  # the successor runs: it is the server now
                self.jobs[name] = nxt.id
                self._save(name)
                log.info("%s: %s; job %s takes over", name, describe_end(job) if job else f"job {jid} ended", nxt.id)
                return Observed("up", pid=int(nxt.id), since=nxt.start, host=await self._address(nxt.node))
            if nxt is not None:
                await self._cancel_quietly(nxt.id)  # pending elsewhere: a plain new job goes anywhere
        if jid is not None:  # it ended without us, or aged out of slurmctld while no daemon watched
            end = describe_end(job) if job is not None else f"job {jid} is gone (ended while notebookd was away)"
            self.last_end[name] = end
            self._drop(name)
            if job is None:  # squeue no longer knows it; should it still run after all, it must not meet the next
                await self._cancel_quietly(jid)
            spec = spec_of(self, name)
            if spec is not None and (job is None or job.state != "TIMEOUT"):
                backoff = self.backoff.setdefault(name, Backoff())
                backoff.failed(spec, now)
                log.warning("%s: %s; submitting again in %.1fs", name, end, backoff.at - now)
            elif spec is not None:
                log.info("%s: %s; submitting again", name, end)
                self.backoff.pop(name, None)
                await self._submit_safely(name)
                return Observed("starting", error=end)
        if backoff is not None and backoff.at is not None:
            spec = spec_of(self, name)
            if spec is not None and now >= backoff.at and not backoff.gave_up(spec):
                backoff.at = None
                await self._submit_safely(name)
                return Observed("starting", last_exit=self.last_end.get(name))
            state = "gave_up" if spec is not None and backoff.gave_up(spec) else "backoff"
            return Observed(state, last_exit=self.last_end.get(name))
        return Observed("stopped", last_exit=self.last_end.get(name))

    async def _handover(self, name: str, job: Job, jobs: dict[str, Job], now: float) -> Observed | None:
        """`resubmit_before`: a running job near its time limit gets a successor on another node (the same
        port there, so not on this node); once the successor answers, it is the server and the old job is
        cancelled HANDOVER_GRACE later. Returns the successor, once it has taken over."""
        spec = spec_of(self, name)
        if spec is None:
            return None
        before = spec.settings.slurm.resubmit_before
        nxt_id = self.successors.get(name)
        if nxt_id is None:
            if before is None or job.end is None or now < job.end - before or job.id in self.no_handover \
                    or name in self.stopping:
                return None
            try:
                self.successors[name] = await self._sbatch(name, f"--exclude={job.node}")
            except BackendError as exc:
                log.error("%s: cannot submit the job to take over before the time limit: %s", name, exc)
                self.no_handover.add(job.id)
                return None
            self._save(name)
            log.info("%s: job %s reaches its time limit in %.0fs; job %s submitted to take over", name, job.id,
                     job.end - now, self.successors[name])
            return None
        nxt = jobs.get(nxt_id)
        if nxt is None or nxt.state not in WAITING | UP:
            log.warning("%s: job %s, to take over from job %s, %s before it answered; job %s runs to its limit",
                        name, nxt_id, job.id, describe_end(nxt) if nxt else "is gone", job.id)
            self.successors.pop(name)
            self.no_handover.add(job.id)
            self._save(name)
            return None
        if nxt.state not in UP:
            return None
        host = await self._address(nxt.node)
        if await http_status(host, spec.port, spec.base_url + "api", 2.0, tls=spec.tls.enabled) != 200:
            return None
        self.jobs[name] = nxt.id
        del self.successors[name]
        self._save(name)
        self.retiring[job.id] = now + HANDOVER_GRACE
        log.info("%s: job %s answers on %s (%s); job %s is cancelled before its time limit", name, nxt.id,
                 nxt.node, host, job.id)
        return Observed("up", pid=int(nxt.id), since=nxt.start, host=host, handover=True)

    async def _cancel_quietly(self, jid: str) -> None:
        try:
            await self._run(["scancel", jid])
        except BackendError:
            pass  # an unknown id is the usual answer

    async def _submit_safely(self, name: str) -> None:
        try:
            await self._submit(name)
        except (BackendError, OSError) as exc:
            log.error("%s: %s", name, exc)
            spec = spec_of(self, name)
            if spec is not None:
                self.backoff.setdefault(name, Backoff()).failed(spec, time.time())

    def log_path(self, name: str, spec: ServerSpec | None = None) -> str | None:
        return os.path.join(self._log_dir(name, spec), "server.log")

    def journal_unit(self, name: str) -> str | None:
        return None

    async def close(self) -> None:
        pass


def spec_of(manager: SlurmManager, name: str) -> ServerSpec | None:
    found = manager.defs.get(name)
    return found[0] if found else None


def backend(config, run_dir: str, tokens: TokenStore, on_change) -> ManagedBackend:
    manager = SlurmManager(run_dir, config.state_dir, config.server.slurm.shared_dir)
    return ManagedBackend(manager, run_dir, config.state_dir, tokens, on_change)


# ---- notebookd check-config ----

_SIZE = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}


def _megabytes(text: str) -> float | None:
    """Slurm's --mem: a number of megabytes, or with a K/M/G/T suffix; None if it is not one."""
    text = text.strip().upper()
    unit = text[-1] if text and text[-1] in _SIZE else "M"
    number = text[:-1] if text and text[-1] in _SIZE else text
    try:
        return float(number) * _SIZE[unit]
    except ValueError:
        return None


def parse_partitions(text: str) -> dict[str, tuple[bool, int, int]]:
    """`sinfo -h -N -o '%P|%c|%m'` (partition, its default marked `*`; CPUs; memory in MB per node) →
    {partition: (is the default, most CPUs of a node, most memory of a node)}."""
    out: dict[str, tuple[bool, int, int]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name, default = parts[0].strip().rstrip("*"), parts[0].strip().endswith("*")
        memory = int(parts[2].strip().rstrip("+")) if parts[2].strip().rstrip("+").isdigit() else 0
        was = out.get(name, (False, 0, 0))
        out[name] = (default or was[0], max(was[1], int(parts[1])), max(was[2], memory))
    return out


def resource_problems(where: str, s, partitions: dict[str, tuple[bool, int, int]]) -> list[str]:
    """One user's `slurm:` against the cluster's partitions (sinfo): one line per problem."""
    name = s.partition or next((p for p, (default, _, _) in partitions.items() if default), "")
    if not name:
        return [f"{where}: slurm.partition: none given and the cluster has no default partition"]
    if name not in partitions:
        return [f"{where}: slurm.partition: no partition {name!r} (sinfo knows: {', '.join(sorted(partitions))})"]
    _, cpus, memory = partitions[name]
    problems = []
    if s.cpus is not None and s.cpus > cpus:
        problems.append(f"{where}: slurm.cpus: {s.cpus}, but no node of partition {name} has more than {cpus}")
    if s.mem:
        mb = _megabytes(s.mem)
        if mb is None:
            problems.append(f"{where}: slurm.mem: {s.mem!r} is not a Slurm size (4G, 500M)")
        elif memory and mb > memory:
            problems.append(f"{where}: slurm.mem: {s.mem}, but no node of partition {name} has more than "
                            f"{memory}M")
    return problems


def check(config, users: list) -> list[str]:
    """check-config for backend: slurm: the client commands, then each user's resources (`users`: (where,
    ServerSpec) pairs). Runs sinfo once, as root, with the daemon's PATH and SLURM_CONF."""
    import subprocess

    manager = SlurmManager("/", config.state_dir or "/", config.server.slurm.shared_dir)
    where = f"{config.file}: backend slurm"
    missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo")
               if not shutil.which(c, path=manager.env["PATH"])]
    if missing:
        return [f"{where}: {', '.join(missing)} not found in {manager.env['PATH']} (install slurm-client)"]
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%P|%c|%m"], capture_output=True, text=True,
                              env=manager.env, timeout=COMMAND_TIMEOUT, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"{where}: sinfo: {exc}"]
    if proc.returncode != 0:
        return [f"{where}: sinfo: {' '.join(proc.stderr.split()) or f'exit status {proc.returncode}'}"]
    partitions = parse_partitions(proc.stdout)
    problems = []
    if config.server.slurm.shared_dir and not os.path.isdir(config.server.slurm.shared_dir):
        problems.append(f"{config.file}: slurm.shared_dir: {config.server.slurm.shared_dir} is not a directory")
    for place, spec in users:
        problems += resource_problems(place, spec.settings.slurm, partitions)
    return problems
