"""The shipped, commented config is the reference: it loads to the declared defaults and names exactly
the declared keys (config.py declares each key once; this keeps the example in step with it)."""

from __future__ import annotations

import os
import re

import pytest

from notebookd import config
from notebookd.paths import Layout

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "etc", "notebookd", "notebookd.yaml")
TEXT = open(EXAMPLE).read()
SECTIONS = {f.name: f.metadata["section"] for f in config.keys_of(config.Config) if "section" in f.metadata}
# sections read by from_document itself: the keys of `server:`; a users.NAME: or kernels.NAME: entry
SECTIONS["server"] = config.ServerSettings


def _layout() -> Layout:
    return Layout(system=True, config=EXAMPLE, config_explicit=True, run_dir="/run/notebookd",
                  state_dir="/var/lib/notebookd", log_dir="/var/log/notebookd")


def _block(name: str) -> str:
    """The lines under a top-level key, up to the next top-level key."""
    return re.search(rf"^{name}:.*\n((?:[ #].*\n|\n)*)", TEXT, re.M).group(1)


def _documented(block: str, indent: int) -> set[str]:
    """Keys at this indentation, shown (`  ip: ...`) or commented out (`  # frame_ancestors: ...`)."""
    return set(re.findall(rf"^#?{' ' * indent}(?:# )?([a-z_]+):", block, re.M))


def test_example_loads_to_the_declared_defaults():
    loaded = config.load(_layout())
    layout_defaults = {"state_dir": "/var/lib/notebookd", "logs": config.Logs(dir="/var/log/notebookd")}
    for f in config.keys_of(config.Config):
        assert getattr(loaded, f.name) == layout_defaults.get(f.name, f.default), f.name
    assert not loaded.limits


def test_example_names_exactly_the_top_level_keys():
    shown = set(re.findall(r"^([a-z_]+):", TEXT, re.M))
    assert shown == set(config._TOP_KEYS)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_example_names_exactly_the_keys_of_each_section(name):
    declared = {f.name for f in config.keys_of(SECTIONS[name])}
    assert _documented(_block(name), 2) == declared


def test_example_entries_use_declared_keys():
    kernel_keys = _documented(_block("kernels"), 4)
    assert kernel_keys == {f.name for f in config.keys_of(config.KernelEntry)}
    user_keys = _documented(_block("users"), 4)
    assert "port" in user_keys and user_keys <= set(config._USER_KEYS)


def test_every_key_has_help_and_says_if_a_reload_takes_it():
    for cls in (config.Config, config.KernelEntry, config.UserEntry, *SECTIONS.values()):
        for f in config.keys_of(cls):
            assert f.metadata["help"].strip(), f"{cls.__name__}.{f.name} has no help"
            assert isinstance(f.metadata["restart"], bool)
