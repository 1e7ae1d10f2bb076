"""embed.py without servers: when a server counts as framed by another site, the files and config it
gets then, and that they go when it ends. What the files do in a browser: test_embed.py."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import pytest

from fakes import spec
from notebookd import embed, jupyter


@pytest.mark.parametrize("sources, framed", [
    (("'self'",), False), (("'none'",), False), (("'self'", "https://lms.example.org"), True),
    (("https:",), True), (("*",), True),
])
def test_another_site_is_any_source_but_self_and_none(sources, framed):
    assert embed.elsewhere(sources) is framed


def _mine(frame_ancestors):
    """A spec whose group is the caller's: install() sets the group, which only root may give away."""
    s = spec(frame_ancestors=frame_ancestors)
    return dataclasses.replace(s, account=dataclasses.replace(s.account, gid=os.getgid()))


def _files(base) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), base) for d, _, names in os.walk(base) for f in names}


def test_framed_elsewhere_gets_custom_js_and_the_lab_extension_then_loses_them(tmp_path):
    base = str(tmp_path)
    framed = _mine(("'self'", "https://lms.example.org"))
    embed.install(framed, base, -1)
    assert _files(base) == {"custom/custom.js", "labextensions/notebookd-embed/package.json",
                            "labextensions/notebookd-embed/static/remoteEntry.js"}
    assert "Jupyter._target = '_self'" in (tmp_path / "custom" / "custom.js").read_text()
    package = json.loads((tmp_path / "labextensions" / "notebookd-embed" / "package.json").read_text())
    assert package["jupyterlab"]["disabledExtensions"] == ["@jupyter-notebook/application-extension:path-opener"]
    for name in _files(base):  # the user reads them; only their owner (root, in the daemon) changes them
        assert stat.S_IMODE(os.stat(os.path.join(base, name)).st_mode) == 0o640
    embed.install(_mine(("'self'",)), base, -1)
    assert _files(base) == set()


def test_the_lab_apps_look_in_the_servers_dir_first_and_keep_the_admins_paths(tmp_path):
    base = str(tmp_path)
    framed = _mine(("https://lms.example.org",))
    config = {"LabServerApp": {"extra_labextensions_path": ["/opt/lab-ext"]}}
    embed.configure(config, framed, base)
    embed.configure(config, framed, base)  # a second write does not add it twice
    assert config["LabServerApp"]["extra_labextensions_path"] == [os.path.join(base, "labextensions"), "/opt/lab-ext"]
    bare = {"LabServerApp": {"extra_labextensions_path": "/opt/lab-ext"}}
    embed.configure(bare, framed, base)
    assert bare["LabServerApp"]["extra_labextensions_path"] == [os.path.join(base, "labextensions"), "/opt/lab-ext"]
    plain = jupyter.server_config(_mine(("'self'",)), jupyter.ServerKind())
    embed.configure(plain, _mine(("'self'",)), base)
    assert "LabServerApp" not in plain


def test_write_config_names_the_extension_dir_beside_the_config(tmp_path):
    path = str(tmp_path / "jupyter_server_config.json")
    jupyter.write_config(path, _mine(("'self'", "https://lms.example.org")), jupyter.ServerKind(), None, -1, -1)
    written = json.loads(open(path).read())
    assert written["LabServerApp"]["extra_labextensions_path"] == [str(tmp_path / "labextensions")]
    assert "frame-ancestors 'self' https://lms.example.org" in \
        written["ServerApp"]["tornado_settings"]["headers"]["Content-Security-Policy"]
