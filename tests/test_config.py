"""The config file: what a good one loads into, and the one-line error every bad one gets.

Pure: nothing here looks at users, ports or directories of this machine (that is checks.py).
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from notebookd import config
from notebookd.config import Config, Health, Listen, Logs, Restart, ServerSettings
from notebookd.paths import Layout
from notebookd.yamlsource import ConfigError

FILE = "/etc/notebookd/notebookd.yaml"
LAYOUT = Layout(system=True, config=FILE, config_explicit=True, run_dir="/run/nbd-test",
                state_dir="/var/lib/nbd-test", log_dir="/var/log/nbd-test")

# The sketch from the issue; line numbers matter to the tests below (alice's port is on line 12).
SKETCH = """\
backend: native
listen: {ip: 127.0.0.1, ports: 8800-8899}
server:
  root_dir: ~/notebooks
  env: {LANG: C.UTF-8}
  stop_timeout: 15s
restart: {backoff_min: 500ms, backoff_max: 1m30s, crashloop_after: 5}
logs: {max_size: 10MiB, keep: 3}
groups: [jupyter, datasci]
users:
  alice:
    port: 8888
    root_dir: /srv/notebooks/{user}
    start_timeout: 2m
  bob: {}
  carol:
    base_url: /lab/{user}
    env: {PROJECT: climate}
health: {interval: 30s, timeout: 5s, failures: 3}
"""


def load(text: str) -> Config:
    return config.load(LAYOUT, text=textwrap.dedent(text))


def sketch(**line_changes: str) -> str:
    """The sketch with some lines replaced: sketch(l12="    port: 70000")."""
    lines = SKETCH.splitlines()
    for key, new in line_changes.items():
        lines[int(key[1:]) - 1] = new
    return "\n".join(lines) + "\n"


def is_one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message


def error(text: str) -> str:
    """The ConfigError `text` gives, checked to be one line that starts with the file."""
    with pytest.raises(ConfigError) as exc:
        load(text)
    message = str(exc.value)
    assert is_one_line(message), message
    assert message.startswith(FILE + ":"), message
    return message


# ---- a good config ----


def test_sketch_loads_into_the_expected_values():
    c = load(SKETCH)
    assert c.file == FILE
    assert c.backend == "native"
    assert c.listen == Listen(ip="127.0.0.1", ports=(8800, 8899))
    assert c.restart == Restart(backoff_min=0.5, backoff_max=90.0, crashloop_after=5, reset_after=60.0)
    assert c.health == Health(interval=30.0, timeout=5.0, failures=3)
    assert c.logs == Logs(dir="/var/log/nbd-test", max_size=10 * 2**20, keep=3)
    assert c.state_dir == "/var/lib/nbd-test"
    assert [g.name for g in c.groups] == ["jupyter", "datasci"]
    assert [g.line for g in c.groups] == [9, 9]
    assert c.server == ServerSettings(root_dir="~/notebooks", env=(("LANG", "C.UTF-8"),), stop_timeout=15.0)
    assert [u.name for u in c.users] == ["alice", "bob", "carol"]


def test_user_settings_override_the_server_defaults_key_by_key():
    c = load(SKETCH)
    alice, bob, carol = c.user("alice"), c.user("bob"), c.user("carol")
    assert alice.port == 8888 and bob.port is None and carol.port is None
    # alice: her own root_dir and start_timeout, everything else from `server:`
    assert alice.settings == dataclasses.replace(c.server, root_dir="/srv/notebooks/{user}", start_timeout=120.0)
    assert alice.settings.env == (("LANG", "C.UTF-8"),)
    assert alice.settings.stop_timeout == 15.0
    # bob lists nothing: exactly the server defaults
    assert bob.settings == c.server
    # carol: base_url gets its trailing slash; {user} stays until the spec is built for a real user
    assert carol.settings.base_url == "/lab/{user}/"
    assert dict(carol.settings.env)["PROJECT"] == "climate"
    assert carol.settings.root_dir == "~/notebooks"
    assert c.server.base_url == "/user/{user}/"


def test_unlisted_user_gets_the_server_defaults():
    c = load(SKETCH)
    assert c.user("dave") is None
    entry = c.entry_for("dave")
    assert (entry.name, entry.line, entry.port, entry.settings) == ("dave", None, None, c.server)


@pytest.mark.parametrize("text", ["", "\n", "# nothing configured yet\n# users: {}\n"])
def test_empty_file_means_every_default(text):
    c = load(text)
    assert c == Config(file=FILE, logs=Logs(dir="/var/log/nbd-test"), state_dir="/var/lib/nbd-test")
    assert c.users == () and c.groups == ()


def test_commented_out_file_with_document_marker_means_every_default():
    c = load("---\n# every setting commented out\n# users: {}\n")
    assert c == load("")


def test_empty_sections_are_the_defaults():
    c = load("listen:\nserver:\nrestart:\nhealth:\nlogs:\ngroups:\nusers:\n  bob:\n")
    assert c.listen == Listen() and c.server == ServerSettings() and c.restart == Restart()
    assert [(u.name, u.port, u.settings) for u in c.users] == [("bob", None, ServerSettings())]


@pytest.mark.parametrize("ports, expected", [("8800-8899", (8800, 8899)), ("9000 - 9000", (9000, 9000)),
                                             ("9000", (9000, 9000)), ("1-65535", (1, 65535))])
def test_listen_ports(ports, expected):
    assert load(f"listen: {{ports: {ports}}}").listen.ports == expected


@pytest.mark.parametrize("ip, expected", [("0.0.0.0", "0.0.0.0"), ("'::1'", "::1"), ("'::'", "::"),
                                          ("'0:0:0:0:0:0:0:1'", "::1")])
def test_listen_ip_is_normalised(ip, expected):
    # non-loopback without TLS needs allow_insecure (test_access_config.py)
    assert load(f"listen: {{ip: {ip}, allow_insecure: true}}").listen.ip == expected


def test_command_as_text_or_list():
    text = load("server: {command: \"/opt/jl/bin/python -m jupyter_server --debug\"}").server.command
    listed = load("server: {command: [/opt/jl/bin/python, -m, jupyter_server, --debug]}").server.command
    assert text == listed == ("/opt/jl/bin/python", "-m", "jupyter_server", "--debug")


def test_env_is_sorted_and_empty_values_are_empty_strings():
    c = load("server:\n  env: {ZED: 1, ALPHA: a, EMPTY: }\n")
    assert c.server.env == (("ALPHA", "a"), ("EMPTY", ""), ("ZED", "1"))


def test_jupyter_config_is_kept_as_canonical_json():
    a = load("server:\n  jupyter_config: {ServerApp: {b: 1, a: [x, 2]}}\n").server.jupyter_config
    b = load("server:\n  jupyter_config:\n    ServerApp:\n      a: [x, 2]\n      b: 1\n").server.jupyter_config
    assert a == b == '{"ServerApp": {"a": ["x", 2], "b": 1}}'


def test_an_alias_shares_settings_between_users():
    c = load("""\
        users:
          alice: &shared {stop_timeout: 5s, root_dir: '/data/{user}'}
          bob: *shared
        """)
    assert c.user("bob").settings == c.user("alice").settings
    assert c.user("bob").settings.stop_timeout == 5.0


# ---- immutability and equality (reload compares what it loaded) ----


def test_config_objects_are_frozen():
    c = load(SKETCH)
    for obj, attr, value in [(c, "backend", "other"), (c.listen, "ports", (1, 2)), (c.server, "base_url", "/x/"),
                             (c.restart, "backoff_min", 0.0), (c.health, "failures", 9), (c.logs, "keep", 1),
                             (c.users[0], "port", 1), (c.users[0].settings, "env", ()), (c.groups[0], "name", "x")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, value)
    # and the collections inside are tuples, so nothing can be appended behind the loader's back
    assert isinstance(c.users, tuple) and isinstance(c.groups, tuple)
    assert isinstance(c.server.env, tuple) and isinstance(c.users[0].settings.command, tuple)


def test_loading_the_same_text_twice_gives_equal_configs():
    a, b = load(SKETCH), load(SKETCH)
    assert a is not b
    assert a == b
    assert hash(a) == hash(b)
    assert a.user("alice").settings == b.user("alice").settings


def test_reordered_env_and_flow_vs_block_style_are_equal():
    block = load("server:\n  env:\n    B: 2\n    A: 1\n  jupyter_config:\n    ServerApp: {y: 1, x: 2}\n")
    flow = load("server: {env: {A: 1, B: 2}, jupyter_config: {ServerApp: {x: 2, y: 1}}}\n")
    assert block.server == flow.server


@pytest.mark.parametrize("changes", [
    {"l12": "    port: 8889"},
    {"l6": "  stop_timeout: 16s"},
    {"l5": "  env: {LANG: C}"},
    {"l8": "logs: {max_size: 10MiB, keep: 4}"},
    {"l17": "    base_url: /lab2/{user}"},
])
def test_a_changed_value_gives_an_unequal_config(changes):
    assert load(sketch(**changes)) != load(SKETCH)


def test_nan_duration_is_rejected():
    # NaN != NaN: if it were accepted, the same file loaded twice would compare unequal
    assert error("restart: {backoff_min: .nan}\n") == f"{FILE}:1: restart.backoff_min: nan is not a duration"


# ---- one-line errors: FILE:LINE: key.path: message ----


def test_bad_port_names_file_line_and_key():
    assert error(sketch(l12="    port: 70000")) == f"{FILE}:12: users.alice.port: 70000 is not a valid port (1-65535)"


def test_an_empty_port_says_so():
    assert error(sketch(l12="    port: ~")) == f"{FILE}:12: users.alice.port: expected a single value, got nothing"


@pytest.mark.parametrize("value, shown", [("0", "0"), ("-1", "-1"), ("'8888'", "'8888'"), ("true", "True"),
                                          ("88.5", "88.5")])
def test_port_must_be_an_integer_in_range(value, shown):
    assert error(sketch(l12=f"    port: {value}")) == \
        f"{FILE}:12: users.alice.port: {shown} is not a valid port (1-65535)"


@pytest.mark.parametrize("text", [sketch(l12="    port: [1]"), "logs: {keep: {a: 1}}\n",
                                  "server: {start_timeout: [1]}\n", "listen: {ports: [8800, 8899]}\n"])
def test_a_list_where_a_number_belongs_is_not_shown_as_internals(text):
    assert "Located" not in error(text)


@pytest.mark.parametrize("text, expected", [
    ("servr: {}\n", "1: servr: unknown key (did you mean 'server'?)"),
    ("server:\n  bse_url: /x/\n", "2: server.bse_url: unknown key (did you mean 'base_url'?)"),
    ("restart: {backof_max: 1s}\n", "1: restart.backof_max: unknown key (did you mean 'backoff_max'?)"),
    ("listen: {prots: 1-2}\n", "1: listen.prots: unknown key (did you mean 'ports'?)"),
])
def test_unknown_key_suggests_the_closest(text, expected):
    assert error(text) == f"{FILE}:{expected}"


def test_unknown_key_in_a_user_entry():
    assert error(sketch(l14="    start_timout: 2m")) == \
        f"{FILE}:14: users.alice.start_timout: unknown key (did you mean 'start_timeout'?)"


def test_unknown_key_without_a_close_match_lists_the_known_ones():
    assert error("logs: {zzzzzz: 1}\n") == f"{FILE}:1: logs.zzzzzz: unknown key (known: dir, keep, max_size)"


def test_duplicate_key():
    assert error("listen:\n  ip: 127.0.0.1\n  ip: ::1\n") == f"{FILE}:3: listen.ip: given twice (first on line 2)"


def test_duplicate_user_in_flow_style():
    assert error("users:\n  alice: {}\n  bob: {}\n  alice: {port: 9000}\n") == \
        f"{FILE}:4: users.alice: given twice (first on line 2)"


def test_duplicate_user_in_block_style_names_the_line_of_the_first():
    assert error("users:\n  alice:\n    port: 1\n  alice:\n    port: 2\n") == \
        f"{FILE}:4: users.alice: given twice (first on line 2)"


def test_user_error_points_at_the_user_line_in_block_style():
    assert error("users:\n  root:\n    port: 9000\n") == f"{FILE}:2: users.root: servers never run as root"


def test_duplicate_explicit_port_names_the_other_user_and_line():
    assert error(sketch(l15="  bob: {port: 8888}")) == \
        f"{FILE}:15: users.bob.port: port 8888 is already given to alice (line 12)"


@pytest.mark.parametrize("text, expected", [
    (sketch(l6="  stop_timeout: 15 secs"),
     "6: server.stop_timeout: '15 secs' is not a duration (e.g. 30s, 1m30s, 500ms)"),
    (sketch(l14="    start_timeout: yes"),
     "14: users.alice.start_timeout: True is not a duration (e.g. 30s, 1m30s, 500ms)"),
    ("health: {interval: -5}\n", "1: health.interval: -5 is negative"),
    ("health: {interval: 0s}\n", "1: health.interval: must be more than zero"),
    ("server: {start_timeout: 0}\n", "1: server.start_timeout: must be more than zero"),
    ("restart: {backoff_min: 0ms}\n", "1: restart.backoff_min: must be more than zero"),
    ("restart: {reset_after: 1 h}\n", None),  # fine: spaces are allowed
])
def test_bad_durations(text, expected):
    if expected is None:
        assert load(text).restart.reset_after == 3600.0
    else:
        assert error(text) == f"{FILE}:{expected}"


def test_zero_timeout_in_a_user_entry_is_rejected():
    assert error("users:\n  alice: {start_timeout: 0s}\n") == \
        f"{FILE}:2: users.alice.start_timeout: must be more than zero"


@pytest.mark.parametrize("text, expected", [
    ("logs: {max_size: 10 megs}\n", "1: logs.max_size: '10 megs' is not a size (e.g. 10MiB, 500kB)"),
    ("logs: {max_size: -1}\n", "1: logs.max_size: -1 is negative"),
    ("logs: {max_size: 2KiB}\n", "1: logs.max_size: must be at least 4KiB"),
    ("logs: {keep: 0}\n", "1: logs.keep: 0 is not a valid count (1-1000)"),
    ("logs: {dir: var/log}\n", "1: logs.dir: 'var/log' must be an absolute path"),
])
def test_bad_log_settings(text, expected):
    assert error(text) == f"{FILE}:{expected}"


@pytest.mark.parametrize("text, expected", [
    ("- a\n- b\n", "1: the file must be a mapping of settings, got a list"),
    ("just some words\n", "1: the file must be a mapping of settings, got str"),
    ("42\n", "1: the file must be a mapping of settings, got int"),
])
def test_file_that_is_not_a_mapping(text, expected):
    assert error(text) == f"{FILE}:{expected}"


@pytest.mark.parametrize("text, line", [
    ("listen:\n  ip: 127.0.0.1\n ports: 8800-8899\n", 3),            # bad indentation
    ("a: 1\nb: 2\nc: d: e\n", 3),                                     # mapping in a plain scalar
    ("users:\n  alice: {}\n  bob: {port: 1\n", 4),                    # unclosed flow mapping, seen at the end
    ("server:\n\tbase_url: /x/\n", 2),                                # a tab
    ("users:\n  alice: {}\n---\nusers: {}\n", 3),                     # two documents
    ("server: *nothing\n", 1),                                        # undefined alias
])
def test_yaml_syntax_error_names_the_line(text, line):
    assert error(text).startswith(f"{FILE}:{line}: YAML syntax error: ")


def test_root_is_never_a_user():
    assert error("users:\n  alice: {}\n  root: {port: 9000}\n") == f"{FILE}:3: users.root: servers never run as root"


@pytest.mark.parametrize("name", ["Alice", "1bob", "bob smith", "a" * 33, "-x", "al:ice", "ünï"])
def test_bad_user_names(name):
    assert error(f"users:\n  {name!r}: {{}}\n").startswith(f"{FILE}:2: users.{name}: ")
    assert error(f"users:\n  {name!r}: {{}}\n").endswith(f": {name!r} is not a valid Unix user name")


@pytest.mark.parametrize("name", ["a", "_svc", "bob.smith", "x-y_z9", "a" * 32])
def test_good_user_names(name):
    assert load(f"users: {{{name}: {{}}}}\n").users[0].name == name


def test_bad_group_names():
    assert error("groups: [jupyter, Staff]\n") == f"{FILE}:1: groups[1]: 'Staff' is not a valid Unix group name"
    assert error("groups: jupyter\n") == f"{FILE}:1: groups: expected a list of Unix group names, got str"


@pytest.mark.parametrize("text, expected", [
    ("server: {base_url: 'user/{user}'}\n", "1: server.base_url: 'user/{user}' must start with '/'"),
    ("server: {base_url: 5}\n", "1: server.base_url: '5' must start with '/'"),
    ("users:\n  bob: {base_url: [/a/]}\n", "2: users.bob.base_url: expected a string, got a list"),
    ("server: {root_dir: notebooks}\n",
     "1: server.root_dir: 'notebooks' must be absolute or start with '~/' (the user's home)"),
    ("server: {root_dir: ~alice/x}\n",
     "1: server.root_dir: '~alice/x' must be absolute or start with '~/' (the user's home)"),
])
def test_bad_base_url_and_root_dir(text, expected):
    assert error(text) == f"{FILE}:{expected}"


@pytest.mark.parametrize("text, expected", [
    ("server: {base_url: '/u/{home}/'}\n", "1: server.base_url: unknown placeholder {home} (only {user} is known)"),
    ("server: {root_dir: '/srv/{uid}'}\n", "1: server.root_dir: unknown placeholder {uid} (only {user} is known)"),
    ("users:\n  bob: {root_dir: '~/{USER}'}\n",
     "2: users.bob.root_dir: unknown placeholder {USER} (only {user} is known)"),
    ("server: {base_url: '/u/{}/'}\n", "1: server.base_url: unknown placeholder {} (only {user} is known)"),
])
def test_only_the_user_placeholder_is_known(text, expected):
    assert error(text) == f"{FILE}:{expected}"


def test_user_placeholder_is_accepted_in_both():
    c = load("server: {base_url: '/hub/{user}/x', root_dir: '/home/{user}/work'}\n")
    assert (c.server.base_url, c.server.root_dir) == ("/hub/{user}/x/", "/home/{user}/work")


@pytest.mark.parametrize("text, expected", [
    ("restart: {backoff_min: 10s, backoff_max: 5s}\n",
     "1: restart.backoff_max: backoff_max must not be less than backoff_min"),
    ("restart:\n  backoff_max: 500ms\n", "2: restart.backoff_max: backoff_max must not be less than backoff_min"),
    ("restart:\n  backoff_min: 2m\n", "2: restart.backoff_min: backoff_max must not be less than backoff_min"),
])
def test_backoff_max_below_backoff_min(text, expected):
    assert error(text) == f"{FILE}:{expected}"


def test_backoff_max_equal_to_min_is_fine():
    assert load("restart: {backoff_min: 5s, backoff_max: 5s}\n").restart.backoff_max == 5.0


@pytest.mark.parametrize("where, line, path", [
    ("server:\n  env:\n    {key}: x\n", 3, "server.env"),
    ("users:\n  alice:\n    env:\n      {key}: x\n", 4, "users.alice.env"),
])
@pytest.mark.parametrize("key", ["JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "NOTEBOOKD_RUN_DIR"])
def test_env_cannot_override_what_notebookd_sets(where, line, path, key):
    assert error(where.replace("{key}", key)) == \
        f"{FILE}:{line}: {path}.{key}: is set by notebookd and cannot be overridden"


def test_env_names_must_be_valid():
    assert error("server:\n  env: {1X: a}\n") == f"{FILE}:2: server.env.1X: not a valid environment variable name"


@pytest.mark.parametrize("text, expected", [
    ("a: &a [*a]\n", "1: a[0]: nested too deep (a recursive alias?)"),
    ("users: {alice: &a {env: *a}}\n", "1: users.alice.env: nested too deep (a recursive alias?)"),
])
def test_recursive_alias(text, expected):
    assert error(text) == f"{FILE}:{expected}"


@pytest.mark.parametrize("text, expected", [
    ("backend: docker\n", "1: backend: 'docker' is not an available backend (available: native, supervisor, systemd, slurm)"),
    ("listen: {ip: localhost}\n", "1: listen.ip: 'localhost' is not an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0)"),
    ("listen: {ports: 9000-8000}\n", "1: listen.ports: range 9000-8000 is empty"),
    ("listen: {ports: 8800-70000}\n", "1: listen.ports: 70000 is not a valid port (1-65535)"),
    ("listen: {ports: lots}\n", "1: listen.ports: 'lots' is not a port range (e.g. 8800-8899)"),
    ("state_dir: var/lib\n", "1: state_dir: 'var/lib' must be an absolute path"),
    ("server: {command: ''}\n", "1: server.command: the command is empty"),
    ("server: {command: \"python 'unclosed\"}\n", "1: server.command: cannot split command: No closing quotation"),
    ("server: {args: --debug}\n", "1: server.args: expected a list, got str"),
    ("server: {jupyter_config: {ServerApp: 1}}\n",
     "1: server.jupyter_config.ServerApp: expected a mapping of trait names to values (e.g. ServerApp: {...})"),
    ("restart: {crashloop_after: 0}\n", "1: restart.crashloop_after: 0 is not a valid count (1-1000)"),
    ("users: [alice, bob]\n", "1: users: expected a mapping, got a list"),
    ("users:\n  alice: 8888\n", "2: users.alice: expected a mapping, got int"),
    ("a: &x {b: 1}\nc: {<<: *x}\n", "2: c: keys must be plain names"),
    ("server: {port: 1}\n", "1: server.port: unknown key (known: args, auth, base_url, command, env, "
                            "frame_ancestors, idle, jupyter_config, path, root_dir, spawn, start, start_timeout, stop_timeout)"),
    ("server: {spawn: vfork}\n", "1: server.spawn: 'vfork' is not a spawn mode (exec or fork)"),
    ("server: {spawn: fork, command: [jupyter-server]}\n",
     "1: server.spawn: spawn: fork runs notebookd's own jupyter_server; with a `command`, use spawn: exec"),
    ("server: {spawn: fork}\nusers:\n  alice:\n    command: [jupyter-server]\n",
     "4: users.alice.command: spawn: fork runs notebookd's own jupyter_server; with a `command`, use spawn: exec"),
])
def test_other_errors(text, expected):
    assert error(text) == f"{FILE}:{expected}"


# ---- errors that are not one line, or not ConfigErrors at all (bugs) ----


def test_control_character_gives_a_one_line_error_with_the_line():
    assert error("backend: native\nlisten: {ip: \x07}\n").startswith(f"{FILE}:2: ")


@pytest.mark.parametrize("value", ["!foo x", "!!set x", "!!map x", "!!omap x"])
def test_bad_tag_gives_a_one_line_error(value):
    error(f"backend: {value}\n")


@pytest.mark.parametrize("value", ["!!timestamp soon", "!!bool maybe"])
def test_bad_tagged_scalar_is_a_config_error(value):
    error(f"server: {{path: {value}}}\n")


@pytest.mark.parametrize("text, start, end", [
    ("server: {start_timeout: 1" + "0" * 400 + "}\n", "1: server.start_timeout: 1000",
     "... is too long (at most 365d)"),
    ("logs: {max_size: 1" + "0" * 400 + "B}\n", "1: logs.max_size: '1000", "... is too large"),
    ("health: {interval: .inf}\n", "1: health.interval: inf", " is too long (at most 365d)"),
])
def test_huge_number_is_a_short_config_error(text, start, end):
    message = error(text)
    assert message.startswith(f"{FILE}:{start}") and message.endswith(end)
    assert len(message) < 150  # the 400 digits are cut short


@pytest.mark.parametrize("text", ['"ser\\nver": {}\n', 'listen: {"i\\np": 1}\n', 'users: {"al\\nice": {}}\n',
                                  "server:\n  env: {\"A\\nB\": x}\n", 'server: {base_url: "/{a\\nb}/"}\n'])
def test_key_with_a_newline_still_gives_one_line(text):
    error(text)


# ---- reading the file ----


def test_missing_explicit_file_is_an_error(tmp_path):
    path = str(tmp_path / "nope.yaml")
    layout = LAYOUT._replace(config=path)
    with pytest.raises(ConfigError) as exc:
        config.load(layout)
    assert str(exc.value) == f"{path}: no such file"


def test_missing_default_file_means_every_default(tmp_path):
    layout = LAYOUT._replace(config=str(tmp_path / "nope.yaml"), config_explicit=False)
    assert config.load(layout).users == ()


def test_file_is_read_from_disk(tmp_path):
    path = tmp_path / "notebookd.yaml"
    path.write_text(SKETCH)
    c = config.load(LAYOUT._replace(config=str(path)))
    assert c.file == str(path)
    assert c.user("alice").port == 8888
    assert dataclasses.replace(c, file=FILE) == load(SKETCH)


@pytest.mark.parametrize("content", [b"users: {\xff\xfe: {}}\n", None])
def test_unreadable_file_is_one_line(tmp_path, content):
    path = tmp_path / "notebookd.yaml"
    if content is None:
        path.mkdir()  # a directory where the file should be
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        config.load(LAYOUT._replace(config=str(path)))
    assert str(exc.value).startswith(f"{path}: cannot read: ")
    assert is_one_line(str(exc.value))


# ---- properties: any input gives a Config or a one-line ConfigError, never a traceback ----


def check_load(text: str) -> None:
    try:
        result = config.load(LAYOUT, text=text)
    except ConfigError as exc:
        message = str(exc)
        assert is_one_line(message), message
        assert message.startswith(FILE + ":"), message
    else:
        assert isinstance(result, Config)


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

ALL_KEYS = sorted({"backend", "listen", "server", "restart", "health", "logs", "state_dir", "groups", "users",
                   "ip", "ports", "port", "dir", "max_size", "keep", "interval", "timeout", "failures",
                   "backoff_min", "backoff_max", "crashloop_after", "reset_after", *config._SERVER_KEYS,
                   "alice", "bob", "root", "ServerApp", "JUPYTER_TOKEN", "HOME"})

# Characters that make YAML interesting, without the ones behind the known bugs below
# (control characters, `!` tags, backslash escapes).
YAML_CHARS = st.sampled_from(list("abcxyz_ -:.,{}[]#&*|>'\"?%@`~/0123456789\n\t") + ["  ", "\n  ", ": ", "- "]
                             + ALL_KEYS + ["{user}", "{home}", "30s", "1m30s", "10MiB", "8800-8899", "70000",
                                           ".nan", ".inf", "null", "yes", "~/", "&a ", "*a", "<<: "])


def yamlish_text() -> st.SearchStrategy[str]:
    soup = st.lists(YAML_CHARS, max_size=60).map("".join)
    # and text shaped like a config: indented `key: value` lines, where the values are soup
    value = st.sampled_from(["", "30s", "1m30s", "-1", "0", ".nan", "yes", "~", "70000", "8800-8899", "10MiB", "{}",
                             "[]", "[a, b]", "{port: 1}", "/user/{user}/", "'/srv/{uid}'", "~/x", "&a {x: 1}", "*a",
                             "'x", "\"JUPYTER_TOKEN\"", "|\n  text"]) | soup
    line = st.tuples(st.sampled_from(["", "", "  ", "    ", "- ", "  - "]), st.sampled_from(ALL_KEYS) | soup,
                     st.sampled_from([": ", ": ", ":\n  "]), value).map("".join)
    return soup | st.lists(line, min_size=1, max_size=10).map("\n".join)


def scalars(safe: bool) -> st.SearchStrategy:
    unit = st.from_regex(r"-?[0-9]{1,5}(\.[0-9]{1,2})? ?(ms|s|m|h|d|B|kB|KiB|MiB|GB|x)?", fullmatch=True)
    words = st.sampled_from(["/user/{user}/", "~/work", "/srv/{uid}", "8800-8899", "70000", "", "JUPYTER_TOKEN",
                             "127.0.0.1", "::1", "python -m jupyter_server", "'unclosed", "root"])
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20) if safe else st.text()
    ints = st.integers(min_value=-10**300, max_value=10**300) if safe else st.integers() | st.just(10**400)
    return st.none() | st.booleans() | ints | st.floats() | text | unit | words


def keys(safe: bool) -> st.SearchStrategy[str]:
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12)
    return st.sampled_from(ALL_KEYS) | (text if safe else st.text(max_size=12))


def structures(safe: bool) -> st.SearchStrategy:
    return st.recursive(
        scalars(safe),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys(safe), children, max_size=5),
        max_leaves=15,
    )


def documents(safe: bool) -> st.SearchStrategy:
    """Any structure, and mappings whose top keys are mostly the real sections."""
    top = st.sampled_from(config._TOP_KEYS) | keys(safe)
    sections = st.dictionaries(top, structures(safe), min_size=1, max_size=6)
    return st.one_of(sections, sections, structures(safe))


def dump(doc) -> str:
    return yaml.safe_dump(doc, default_flow_style=False, allow_unicode=True)


def _paths(node, prefix=()):
    """Every place in a parsed document: tuples of keys and list indexes."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_sketch(draw, safe: bool) -> str:
    doc = yaml.safe_load(SKETCH)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(places))
        *parent_path, last = path
        parent = doc
        for step in parent_path:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "swap", "rename", "delete", "nest"]))
        if action == "replace":
            parent[last] = draw(structures(safe))
        elif action == "swap":  # a value that is valid somewhere else in the file
            source = doc
            for step in draw(st.sampled_from(places)):
                source = source[step]
            parent[last] = copy.deepcopy(source)
        elif action == "rename":
            if isinstance(parent, dict):
                parent[draw(keys(safe))] = parent.pop(last)
        elif action == "delete":
            del parent[last]
        else:
            parent[last] = {draw(keys(safe)): parent[last]}
    return dump(doc)


@PROPERTY
@given(yamlish_text())
def test_property_yamlish_text(text):
    check_load(text)


@PROPERTY
@given(documents(safe=True).map(dump))
def test_property_yaml_structures(text):
    check_load(text)


@PROPERTY
@given(mutated_sketch(safe=True))
def test_property_mutated_sketch(text):
    check_load(text)


@PROPERTY
@given(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), structures(safe=True))
def test_property_anything_under_any_user(name, value):
    check_load(dump({"users": {name: value}}))


# The same properties over everything hypothesis can produce. They fail on the known bugs above
# (control characters, tags, newlines in keys); when those are fixed, drop the marks. No shrinking
# while they are expected to fail: finding one failure is the point, and shrinking costs seconds.
KNOWN_FAILING = settings(PROPERTY, phases=[Phase.explicit, Phase.generate])


@KNOWN_FAILING
@given(st.text())
def test_property_arbitrary_text(text):
    check_load(text)


@KNOWN_FAILING
@given(documents(safe=False).map(dump) | mutated_sketch(safe=False))
def test_property_arbitrary_structures(text):
    check_load(text)


# ---- the command line ----


def run_cli(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "NOTEBOOKD_RUN_DIR": str(tmp_path / "run")}  # never the real control socket
    return subprocess.run([sys.executable, "-m", "notebookd", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))


def assert_one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_check_config_broken_yaml(tmp_path):
    bad = tmp_path / "notebookd.yaml"
    bad.write_text("listen:\n  ip: 127.0.0.1\n ports: 8800-8899\nusers: {}\n")
    out = run_cli("--config", str(bad), "check-config", tmp_path=tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    line = assert_one_line(out.stderr)
    assert f"{bad}:3: " in line
    assert "YAML syntax error" in line


def test_cli_check_config_bad_value(tmp_path):
    bad = tmp_path / "notebookd.yaml"
    bad.write_text(sketch(l12="    port: 70000"))
    out = run_cli("--config", str(bad), "check-config", tmp_path=tmp_path)
    assert out.returncode == 1
    assert assert_one_line(out.stderr) == \
        f"notebookd: {bad}:12: users.alice.port: 70000 is not a valid port (1-65535)"


def test_cli_check_config_missing_file(tmp_path):
    out = run_cli("--config", "/nonexistent", "check-config", tmp_path=tmp_path)
    assert out.returncode == 1
    assert assert_one_line(out.stderr) == "notebookd: /nonexistent: no such file"


@pytest.mark.parametrize("args", [("status", "--bogus"), ("--bogus",), ()])
def test_cli_usage_error_is_one_line_exit_2(tmp_path, args):
    out = run_cli(*args, tmp_path=tmp_path)
    assert out.returncode == 2
    line = assert_one_line(out.stderr)
    assert line.startswith("notebookd")
    assert "--help" in line
    if args == ("status", "--bogus"):
        assert "--bogus" in line


def test_cli_env_config_is_used(tmp_path):
    # $NOTEBOOKD_CONFIG names the file when --config does not (and a missing one is an error)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NOTEBOOKD_CONFIG": str(tmp_path / "gone.yaml"),
           "NOTEBOOKD_RUN_DIR": str(tmp_path / "run")}
    out = subprocess.run([sys.executable, "-m", "notebookd", "check-config"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert assert_one_line(out.stderr) == f"notebookd: {tmp_path / 'gone.yaml'}: no such file"


def test_cli_relative_config_path_is_named_as_given(tmp_path):
    (tmp_path / "rel.yaml").write_text("servr: {}\n")
    out = run_cli("--config", "rel.yaml", "check-config", tmp_path=tmp_path)
    assert out.returncode == 1
    assert assert_one_line(out.stderr) == "notebookd: rel.yaml:1: servr: unknown key (did you mean 'server'?)"



# ---- backends, supervisor:, limits: ----

@pytest.mark.parametrize("name", ["native", "supervisor", "systemd"])
def test_every_backend_is_accepted(name):
    assert load(f"backend: {name}\n").backend == name


def test_supervisor_and_limits_sections():
    c = load("supervisor: {socket: /tmp/s.sock, conf_d: /tmp/conf.d}\nlimits: {memory_max: 2GiB, cpu_quota: 150%}\n")
    assert c.supervisor == config.Supervisor(socket="/tmp/s.sock", conf_d="/tmp/conf.d")
    assert c.limits == config.Limits(memory_max=2 * 2**30, cpu_quota=150) and c.limits
    empty = load("limits: {memory_max: , cpu_quota: }\n").limits
    assert empty == config.Limits() and not empty


@pytest.mark.parametrize("text, expected", [
    ("supervisor: {socket: run/s.sock}\n", "1: supervisor.socket: 'run/s.sock' must be an absolute path"),
    ("supervisor: {sock: /x}\n", "1: supervisor.sock: unknown key (did you mean 'socket'?)"),
    ("limits: {cpu_quota: 2}\n", "1: limits.cpu_quota: 2 is not a CPU quota (e.g. 50%, 200% for two cores)"),
    ("limits: {cpu_quota: 0%}\n", "1: limits.cpu_quota: '0%' is not a CPU quota (e.g. 50%, 200% for two cores)"),
    ("limits: {memory_max: 1MiB}\n", "1: limits.memory_max: must be at least 16MiB (a jupyter server alone needs more)"),
    ("limits: {memory_max: lots}\n", None),
])
def test_supervisor_and_limits_errors(text, expected):
    message = error(text)
    assert is_one_line(message) and message.startswith(FILE + ":1: ")
    if expected:
        assert message == f"{FILE}:{expected}"


def test_embed_sets_frame_ancestors_for_everyone_and_a_user_may_override():
    text = ("embed: {frame_ancestors: [\"'self'\", https://lms.example.org]}\n"
            "users:\n  alice: {}\n  bob: {frame_ancestors: [\"'none'\"]}\n")
    c = load(text)
    assert dict((u.name, u.settings.frame_ancestors) for u in c.users) == {
        "alice": ("'self'", "https://lms.example.org"), "bob": ("'none'",)}
    assert error("embed: {frame_ancestors: [x]}\nserver:\n  frame_ancestors: [y]\n") == \
        f"{FILE}:3: server.frame_ancestors: already given under embed: (line 1); give it once"


# ---- hostile config text (issue 10): aliases that expand without end, control characters ----

def test_an_alias_bomb_is_refused_quickly_with_one_line():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 values
    text = "listen: {ip: 127.0.0.1}\n" + "\n".join(levels) + "\n"
    import time

    t0 = time.monotonic()
    message = error(text)
    assert time.monotonic() - t0 < 30  # unbounded, 10**9 values would take hours; 30 s leaves room for a loaded CI machine
    assert "more than 100000 values" in message


@pytest.mark.parametrize("key, value", [
    ("base_url", '"/u/{user}/\\nExecStartPre=/bin/sh -c id"'),
    ("args", '["--ServerApp.x=1\\nEnvironment=LD_PRELOAD=/tmp/x.so"]'),
    ("env", '{PROJECT: "a\\nb"}'),
    ("root_dir", '"/srv/\\r{user}"'),
])
def test_a_control_character_in_a_value_is_refused_with_its_line(key, value):
    message = error(f"users:\n  bob:\n    {key}: {value}\n")
    assert ":3: " in message and "control character" in message


# ---- what a reload may change: derived from the declarations (restart=True) ----

@pytest.mark.parametrize("before, after, fixed", [
    ("backend: native\n", "backend: supervisor\n", ["backend"]),
    ("", "supervisor: {socket: /run/other.sock}\n", ["supervisor.socket"]),
    ("", "state_dir: /srv/notebookd-state\n", ["state_dir"]),
    ("", "listen: {ports: 9000-9100}\nserver: {stop_timeout: 3s}\n", []),  # live: a reload applies them
])
def test_restart_only_keys_come_from_the_declarations(before, after, fixed):
    assert config.restart_only_changes(load(before), load(after)) == fixed


def test_a_reload_that_moves_state_dir_is_refused_and_changes_nothing(tmp_path):
    """Tokens, password hashes, records and the port book all live in state_dir: a reload that moved
    only some of them (the port book, before) would hand out new ports and lose every token."""
    import asyncio

    from notebookd.control import Refused
    from notebookd.daemon import Daemon

    cfg = tmp_path / "notebookd.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/a\n")
    layout = LAYOUT._replace(config=str(cfg))
    daemon = Daemon(layout, config.load(layout))
    cfg.write_text(f"state_dir: {tmp_path}/b\nlisten: {{ports: 9000-9100}}\n")
    with pytest.raises(Refused) as exc:
        asyncio.run(daemon.reload())
    assert str(exc.value) == (f"reload failed, running config kept: {cfg}: state_dir: take effect only "
                              "when notebookd is restarted")
    assert daemon.config.state_dir == f"{tmp_path}/a" and daemon.config.listen.ports == (8800, 8899)
    assert daemon.last_reload["ok"] is False and not (tmp_path / "b").exists()


@pytest.mark.parametrize("backend", ["native", "systemd"])
def test_on_demand_and_idle_stop_load_with_a_backend_that_holds_ports(backend):
    cfg = load(f"""\
        backend: {backend}
        server: {{start: on-demand, idle: {{stop_after: 2h}}}}
        users:
          alice: {{start: always}}
        """)
    assert cfg.server.start == "on-demand" and cfg.server.idle.stop_after == 7200
    assert cfg.users[0].settings.start == "always"


@pytest.mark.parametrize("backend, why", [
    ("supervisor", "backend: supervisor binds its servers' ports itself"),
    ("slurm", "the server's port is on a compute node"),
])
def test_on_demand_with_a_backend_that_cannot_hold_ports_is_a_one_line_error(backend, why):
    with pytest.raises(ConfigError) as err:
        load(f"""\
            backend: {backend}
            users:
              alice: {{}}
              bob: {{start: on-demand}}
            """)
    text = str(err.value)
    assert "\n" not in text and why in text and "needs backend: native or systemd" in text
    assert f"{FILE}:4" in text  # bob's line
    with pytest.raises(ConfigError, match="needs backend"):
        load(f"backend: {backend}\nserver: {{idle: {{stop_after: 1h}}}}\n")
