"""Server states and their allowed moves, and the reconcile step (desired vs running -> actions)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from notebookd import config, reconcile
from notebookd.config import Health, Logs, Restart, ServerSettings
from notebookd.desired import spec_for
from notebookd.model import TRANSITIONS, Account, ServerSpec, ServerState, TransitionError, check_transition, path
from notebookd.paths import Layout
from notebookd.reconcile import Plan, plan

S = ServerState

# ---- states ----


def test_every_state_has_its_moves_declared():
    assert set(TRANSITIONS) == set(ServerState)


@pytest.mark.parametrize("old, new", list(itertools.product(ServerState, ServerState)),
                         ids=lambda s: s.value)
def test_check_transition_allows_exactly_the_table(old, new):
    if new in TRANSITIONS[old]:
        check_transition("alice", old, new)  # no exception
    else:
        with pytest.raises(TransitionError) as exc:
            check_transition("alice", old, new)
        assert str(exc.value) == f"alice: {old.value} -> {new.value} is not a valid transition"


@pytest.mark.parametrize("old, new", [
    (S.STOPPED, S.STARTING),  # also an adopted server: "adopting pid N", RUNNING once it answers
    (S.STARTING, S.RUNNING), (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED),
    (S.RUNNING, S.BACKOFF), (S.BACKOFF, S.STARTING), (S.STARTING, S.CRASHLOOP), (S.CRASHLOOP, S.STARTING),
    (S.BACKOFF, S.STOPPED), (S.CRASHLOOP, S.STOPPED),
    (S.RUNNING, S.STOPPING), (S.STOPPING, S.BACKOFF),  # a failed health check: stopped, then restarted
    (S.BACKOFF, S.CRASHLOOP),  # a process manager that gave up after its own retries
])
def test_the_moves_a_server_makes(old, new):
    check_transition("bob", old, new)


@pytest.mark.parametrize("old, new", [
    (S.RUNNING, S.STOPPED),     # a running server is always stopped through STOPPING (SIGTERM, grace, SIGKILL)
    (S.STARTING, S.STOPPED),
    (S.STOPPED, S.BACKOFF),
    (S.STOPPED, S.RUNNING),     # adoption too goes through STARTING: it is RUNNING once it answers
    (S.BACKOFF, S.RUNNING),     # it must start again first
    (S.ERROR, S.STARTING),
])
def test_moves_that_are_bugs(old, new):
    with pytest.raises(TransitionError):
        check_transition("bob", old, new)


def test_no_state_moves_to_itself():
    # every transition is logged and timestamped; a self-move would be noise that hides a bug
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def _reachable(start: ServerState) -> set[ServerState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("state", [s for s in ServerState if s is not S.ERROR], ids=lambda s: s.value)
def test_every_live_state_can_be_stopped_and_brought_back(state):
    reachable = _reachable(state)  # includes the state itself
    assert S.STOPPED in reachable
    assert S.RUNNING in reachable


def test_error_is_final():
    assert TRANSITIONS[S.ERROR] == frozenset()


@pytest.mark.parametrize("old, new, steps", [
    (S.BACKOFF, S.RUNNING, [S.STARTING, S.RUNNING]),    # the manager restarted it and it answered between polls
    (S.RUNNING, S.STARTING, [S.BACKOFF, S.STARTING]),   # it exited and the manager started a new one
    (S.RUNNING, S.STOPPED, [S.BACKOFF, S.STOPPED]),     # it exited, and nobody wants it back
    (S.STOPPING, S.RUNNING, [S.BACKOFF, S.STARTING, S.RUNNING]),
    (S.RUNNING, S.CRASHLOOP, [S.CRASHLOOP]),
    (S.RUNNING, S.RUNNING, []),
])
def test_a_poll_passes_only_through_states_it_may_have_missed(old, new, steps):
    assert path("bob", old, new) == steps
    for a, b in zip([old] + steps, steps):
        check_transition("bob", a, b)


def test_nothing_leaves_error_even_through_missed_states():
    with pytest.raises(TransitionError):
        path("bob", S.ERROR, S.RUNNING)


def test_the_architecture_diagram_draws_exactly_the_table():
    """docs/architecture.md's state diagram lists its arrows as `A -> B` lines under "Moves:"."""
    import os
    import re

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "architecture.md")).read()
    block = doc.split("Moves (model.TRANSITIONS):\n```", 1)[1].split("```", 1)[0]
    drawn = {(S(a), S(b)) for a, b in re.findall(r"\b([a-z]+) -> ([a-z]+)\b", block)}
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert drawn == table


# ---- specs ----

ALICE = Account("alice", 1001, 1001, (27, 100), "/home/alice", "/bin/bash")


def account(name: str, uid: int) -> Account:
    return Account(name, uid, uid, (), f"/home/{name}", "/bin/bash")


def spec(name: str, uid: int = 0, port: int = 0, **settings) -> ServerSpec:
    uid = uid or 1000 + sum(map(ord, name))
    return ServerSpec(
        account=account(name, uid), ip="127.0.0.1", port=port or 8000 + uid % 900,
        base_url=f"/user/{name}/", root_dir=f"/home/{name}",
        settings=dataclasses.replace(ServerSettings(), **settings),
        restart=Restart(), health=Health(), logs=Logs(dir="/var/log/notebookd"),
    )


def test_equal_specs_built_apart_are_equal():
    assert spec("alice") == spec("alice")
    assert spec("alice") is not spec("alice")
    assert hash(spec("alice")) == hash(spec("alice"))


@pytest.mark.parametrize("ip, host, url", [
    ("127.0.0.1", None, "http://127.0.0.1:8801/user/alice/"),
    ("0.0.0.0", None, "http://127.0.0.1:8801/user/alice/"),  # a wildcard is reached on loopback
    ("::", None, "http://[::1]:8801/user/alice/"),
    ("::1", None, "http://[::1]:8801/user/alice/"),
    ("fe80::2", None, "http://[fe80::2]:8801/user/alice/"),
    ("0.0.0.0", "nb.example.org", "http://nb.example.org:8801/user/alice/"),
])
def test_spec_url(ip, host, url):
    s = dataclasses.replace(spec("alice", port=8801), ip=ip)
    assert s.url(host) == url
    assert s.name == "alice"


# ---- reconcile.plan ----


def test_new_user_is_started():
    a = spec("alice")
    p = plan({"alice": a}, frozenset(), running={}, known=set())
    assert p == Plan(start=(a,))
    assert p.describe() == "start alice"


def test_known_but_stopped_user_is_started():
    # e.g. it was held and the hold was lifted: the backend knows it, it is not running
    a = spec("alice")
    assert plan({"alice": a}, frozenset(), running={}, known={"alice"}) == Plan(start=(a,))


def test_unchanged_user_is_left_alone():
    p = plan({"alice": spec("alice")}, frozenset(), running={"alice": spec("alice")}, known={"alice"})
    assert p == Plan()
    assert not p
    assert p.describe() == "nothing to do"


@pytest.mark.parametrize("change", [
    lambda s: dataclasses.replace(s, port=s.port + 1),
    lambda s: dataclasses.replace(s, ip="0.0.0.0"),
    lambda s: dataclasses.replace(s, base_url="/lab/alice/"),
    lambda s: dataclasses.replace(s, root_dir="/srv/alice"),
    lambda s: dataclasses.replace(s, account=dataclasses.replace(s.account, uid=4242)),  # user re-created
    lambda s: dataclasses.replace(s, account=dataclasses.replace(s.account, groups=(27,))),  # group change
    lambda s: dataclasses.replace(s, settings=dataclasses.replace(s.settings, env=(("A", "1"),))),
    lambda s: dataclasses.replace(s, settings=dataclasses.replace(s.settings, args=("--debug",))),
    lambda s: dataclasses.replace(s, restart=Restart(backoff_min=2.0)),
    lambda s: dataclasses.replace(s, health=Health(interval=5.0)),
    lambda s: dataclasses.replace(s, logs=Logs(dir="/var/log/other")),
], ids=["port", "ip", "base_url", "root_dir", "uid", "groups", "env", "args", "restart", "health", "logs"])
def test_changed_spec_is_restarted(change):
    old = spec("alice")
    new = change(old)
    assert new != old
    p = plan({"alice": new}, frozenset(), running={"alice": old}, known={"alice"})
    assert p == Plan(restart=(new,))  # the new spec, not the old one
    assert p.describe() == "restart alice"


def test_held_user_that_is_running_is_stopped():
    p = plan({"alice": spec("alice")}, frozenset({"alice"}), running={"alice": spec("alice")}, known={"alice"})
    assert p == Plan(stop=("alice",))
    assert p.describe() == "stop alice"


def test_held_user_with_a_changed_spec_is_stopped_not_restarted():
    old = spec("alice")
    new = dataclasses.replace(old, port=old.port + 1)
    assert plan({"alice": new}, frozenset({"alice"}), running={"alice": old}, known={"alice"}) == Plan(stop=("alice",))


@pytest.mark.parametrize("known", [set(), {"alice"}])
def test_held_user_that_is_not_running_is_left_alone(known):
    p = plan({"alice": spec("alice")}, frozenset({"alice"}), running={}, known=known)
    assert p == Plan()
    assert not p


@pytest.mark.parametrize("running", [{}, {"bob": spec("bob")}])
def test_user_no_longer_desired_is_forgotten(running):
    p = plan({}, frozenset(), running=running, known={"bob"})
    assert p == Plan(forget=("bob",))
    assert p.describe() == "remove bob"


def test_held_user_no_longer_desired_is_forgotten():
    # a hold on a user who left the config does not keep their server around
    assert plan({}, frozenset({"bob"}), running={"bob": spec("bob")}, known={"bob"}) == Plan(forget=("bob",))


def test_everything_at_once_in_name_order():
    desired = {n: spec(n) for n in ("carol", "alice", "bob", "erin", "dave", "frank")}
    changed = dataclasses.replace(spec("dave"), port=9999)
    running = {"bob": spec("bob"), "dave": changed, "erin": spec("erin"), "zed": spec("zed"), "yan": spec("yan")}
    known = set(running) | {"frank", "xena"}
    p = plan(desired, frozenset({"erin", "frank"}), running, known)
    assert p.start == (desired["alice"], desired["carol"])
    assert p.restart == (desired["dave"],)
    assert p.stop == ("erin",)
    assert p.forget == ("xena", "yan", "zed")
    assert p.describe() == "start alice, carol; restart dave; stop erin; remove xena, yan, zed"


def test_plan_does_not_touch_its_inputs():
    desired, running, known = {"alice": spec("alice")}, {"bob": spec("bob")}, {"bob"}
    before = (dict(desired), dict(running), set(known))
    plan(desired, frozenset({"alice"}), running, known)
    assert (desired, running, known) == before


# ---- reload: specs from the same file compare equal, so nobody is restarted ----

LAYOUT = Layout(system=True, config="/etc/notebookd/notebookd.yaml", config_explicit=True, run_dir="/run/x",
                state_dir="/var/lib/x", log_dir="/var/log/x")

CONFIG = """\
listen: {ports: 8800-8899}
server:
  root_dir: ~/notebooks
  stop_timeout: 15s
users:
  alice: {port: 8801, root_dir: '/srv/{user}'}
  bob: {}
  carol: {env: {A: "1"}}
"""

ACCOUNTS = {"alice": ALICE, "bob": account("bob", 1002), "carol": account("carol", 1003)}
PORTS = {"alice": 8801, "bob": 8850, "carol": 8851}


def specs_from(text: str) -> dict[str, ServerSpec]:
    c = config.load(LAYOUT, text=text)
    return {n: spec_for(c, c.entry_for(n), acc, PORTS[n]) for n, acc in ACCOUNTS.items()}


def test_spec_resolves_user_and_home():
    s = specs_from(CONFIG)
    assert (s["alice"].root_dir, s["alice"].base_url) == ("/srv/alice", "/user/alice/")
    assert (s["bob"].root_dir, s["bob"].base_url) == ("/home/bob/notebooks", "/user/bob/")
    assert s["alice"].settings.stop_timeout == 15.0


def reload_plan(old_text: str, new_text: str) -> Plan:
    running = specs_from(old_text)
    return plan(specs_from(new_text), frozenset(), running, set(running))


def test_reload_of_the_same_file_restarts_nobody():
    assert reload_plan(CONFIG, CONFIG) == Plan()


def test_reload_after_comments_and_reformatting_restarts_nobody():
    reformatted = "# edited by hand\n\n" + CONFIG.replace("users:\n", "users:   # who\n").replace(
        "  bob: {}\n", "  bob:\n") + "\nrestart: {}\n"
    assert reload_plan(CONFIG, reformatted) == Plan()


def test_reload_restarts_only_the_user_whose_settings_changed():
    p = reload_plan(CONFIG, CONFIG.replace('env: {A: "1"}', 'env: {A: "2"}'))
    assert [s.name for s in p.restart] == ["carol"] and not (p.start or p.stop or p.forget)


def test_reload_of_a_default_restarts_those_who_do_not_override_it():
    # alice sets her own root_dir; bob and carol take server.root_dir
    p = reload_plan(CONFIG, CONFIG.replace("root_dir: ~/notebooks", "root_dir: ~/work"))
    assert [s.name for s in p.restart] == ["bob", "carol"]


def test_reload_of_a_shared_policy_restarts_everyone():
    p = reload_plan(CONFIG, CONFIG + "health: {interval: 10s}\n")
    assert [s.name for s in p.restart] == ["alice", "bob", "carol"]


# ---- reconcile.apply ----


class RecordingBackend:
    """Stands in for a backend: records what it is asked to do."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    async def start(self, spec):
        self.calls.append(("start", spec.name))

    async def restart(self, spec):
        self.calls.append(("restart", spec.name))

    async def stop(self, name):
        self.calls.append(("stop", name))

    async def forget(self, name):
        self.calls.append(("forget", name))


def test_apply_carries_out_every_step_once():
    backend = RecordingBackend()
    p = Plan(start=(spec("alice"), spec("bob")), restart=(spec("carol"),), stop=("dave",), forget=("erin",))
    asyncio.run(reconcile.apply(p, backend))
    assert sorted(backend.calls) == [("forget", "erin"), ("restart", "carol"), ("start", "alice"),
                                     ("start", "bob"), ("stop", "dave")]


def test_apply_of_an_empty_plan_does_nothing():
    backend = RecordingBackend()
    asyncio.run(reconcile.apply(Plan(), backend))
    assert backend.calls == []
