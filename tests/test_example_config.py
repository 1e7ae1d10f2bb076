"""The shipped, commented config is the reference: it must load and name every key there is."""

from __future__ import annotations

import dataclasses
import os
import re

from notebookd import config
from notebookd.paths import Layout

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "etc", "notebookd", "notebookd.yaml")


def _layout() -> Layout:
    return Layout(system=True, config=EXAMPLE, config_explicit=True, run_dir="/run/notebookd",
                  state_dir="/var/lib/notebookd", log_dir="/var/log/notebookd")


def test_example_loads_to_the_defaults():
    loaded = config.load(_layout())
    assert loaded.server == config.ServerSettings()
    assert loaded.restart == config.Restart() and loaded.health == config.Health()
    assert loaded.listen == config.Listen()
    assert loaded.logs == config.Logs(dir="/var/log/notebookd")
    assert loaded.supervisor == config.Supervisor() and loaded.limits == config.Limits() and not loaded.limits
    assert loaded.state_dir == "/var/lib/notebookd" and loaded.users == () and loaded.groups == ()
    assert loaded.tls == config.TLS() and loaded.proxy == config.Proxy() and loaded.kernels == ()
    assert loaded.front_door == config.FrontDoor()


def test_example_documents_every_key():
    text = open(EXAMPLE).read()
    documented = set(re.findall(r"^\s*#?\s*([a-z_]+):", text, re.M))
    sections = {
        "listen": config.Listen, "server": config.ServerSettings, "restart": config.Restart,
        "health": config.Health, "logs": config.Logs, "supervisor": config.Supervisor, "limits": config.Limits,
        "tls": config.TLS, "proxy": config.Proxy, "front_door": config.FrontDoor,
    }
    declared = set(config._TOP_KEYS) | {"port"} | {"display_name", "argv", "python", "venv", "language", "env"}
    for cls in sections.values():
        declared |= {f.name for f in dataclasses.fields(cls)}
    missing = declared - documented
    assert not missing, f"keys without documentation in etc/notebookd/notebookd.yaml: {sorted(missing)}"
    # and nothing documented that the loader would reject
    for name, cls in sections.items():
        block = re.search(rf"^{name}:\n((?:[ #].*\n|\n)*)", text, re.M).group(1)
        keys = set(re.findall(r"^  ([a-z_]+):", block, re.M))
        assert keys <= {f.name for f in dataclasses.fields(cls)}, (name, keys)
