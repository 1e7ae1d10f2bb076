"""Embedding that stays in its frame: what a server needs once `frame_ancestors` lets another site frame it.

The CSP header (jupyter.py) only lets the frame load. The UIs then open notebooks in a new browser
tab, which leaves the embedding page:

- the classic tree (nbclassic, notebook 6) opens every file in `Jupyter._target`, `_blank` by default.
  `custom/custom.js` in the server's config dir sets it to `_self`; both UIs look for custom.js in
  `jupyter_config_dir()`, which is notebookd's own (JUPYTER_CONFIG_DIR), never `~/.jupyter`.
- Notebook 7 opens documents through its `INotebookPathOpener`, whose default is `window.open(url)`
  with no target, and it has no setting for that. A small prebuilt lab extension, found only through
  `LabServerApp.extra_labextensions_path` in notebookd's config, replaces that plugin with one that
  opens in the same frame (the default opener, given `_self`).
- JupyterLab opens documents inside its own page: it needs nothing.

The files are root's, in the server's root-owned dir (launch.py), readable by the user, changed by
root only; with no other site allowed they are removed, and the servers behave as jupyter ships them.
"""

from __future__ import annotations

import json
import os
import shutil

from notebookd.fsutil import ensure_dir, remove, write_atomic
from notebookd.model import ServerSpec

# frame-ancestors sources that allow no other site
_OWN = {"'self'", "'none'"}

EXTENSION = "notebookd-embed"  # the lab extension's package name

CUSTOM_JS = """\
// Written by notebookd: another site may embed this server (frame_ancestors), so the classic UI opens
// notebooks and files in this frame rather than a new browser tab, which would leave the embedding page.
define(['base/js/namespace'], function (Jupyter) {
    Jupyter._target = '_self';
    // links the file list drew before this file arrived
    document.querySelectorAll('a.item_link[target="_blank"]').forEach(function (link) {
        link.setAttribute('target', '_self');
    });
});
"""

# A module federation container written by hand (what @jupyterlab/builder would emit, without a
# build): JupyterLab's loader calls init() with its share scope and get('./extension').
REMOTE_ENTRY = """\
// Written by notebookd: another site may embed this server (frame_ancestors), so Notebook 7 opens
// documents in this frame; its own path opener (disabled by package.json) opens a new browser tab.
(function () {
    "use strict";
    var shared = null;
    function plugins() {
        var versions = shared && shared["@jupyter-notebook/application"];
        var keys = versions ? Object.keys(versions) : [];
        if (!keys.length) {
            return Promise.resolve([]);  // JupyterLab without Notebook 7: nothing to replace
        }
        var loaded = keys.filter(function (k) { return versions[k].loaded; });
        return Promise.resolve(versions[(loaded.length ? loaded : keys)[0]].get()).then(function (factory) {
            var app = factory();
            if (!app.INotebookPathOpener || !app.defaultNotebookPathOpener) {
                return [];
            }
            return [{
                id: "notebookd-embed:path-opener",
                description: "Opens paths in this frame (notebookd: embedded by another site)",
                autoStart: true,
                provides: app.INotebookPathOpener,
                activate: function () {
                    return {
                        open: function (options) {
                            return app.defaultNotebookPathOpener.open(
                                Object.assign({}, options, {target: options.target || "_self"}));
                        }
                    };
                }
            }];
        });
    }
    window._JUPYTERLAB = window._JUPYTERLAB || {};
    window._JUPYTERLAB["notebookd-embed"] = {
        init: function (scope) { shared = scope; },
        get: function (module) {
            if (module !== "./extension") {
                return Promise.reject(new Error("notebookd-embed has no " + module));
            }
            // an ES module's shape: without __esModule the loader takes the whole object for a plugin
            return plugins().then(function (list) {
                return function () { return {__esModule: true, default: list}; };
            });
        }
    };
})();
"""

PACKAGE = {
    "name": EXTENSION,
    "version": "1.0.0",
    "description": "notebookd: Notebook 7 opens documents in the frame that embeds it",
    "jupyterlab": {
        "_build": {"load": "static/remoteEntry.js", "extension": "./extension"},
        "disabledExtensions": ["@jupyter-notebook/application-extension:path-opener"],
    },
}


def elsewhere(frame_ancestors: tuple[str, ...]) -> bool:
    """Whether these CSP frame-ancestors let a site other than the server's own frame it."""
    return any(source not in _OWN for source in frame_ancestors)


def _labextensions(base: str) -> str:
    return os.path.join(base, "labextensions")


def install(spec: ServerSpec, base: str, owner: int) -> None:
    """Make `base` (the server's config dir) hold the files above exactly when `spec` may be framed
    by another site. Owner `owner` (root, or -1 for the caller in single-user mode), group the user's."""
    gid = spec.account.gid
    custom = os.path.join(base, "custom")
    labext = _labextensions(base)
    if not elsewhere(spec.settings.frame_ancestors):
        remove(os.path.join(custom, "custom.js"))
        shutil.rmtree(labext, ignore_errors=True)
        return
    ensure_dir(custom, 0o750, owner, gid)
    write_atomic(os.path.join(custom, "custom.js"), CUSTOM_JS.encode(), 0o640, owner, gid)
    package = os.path.join(labext, EXTENSION)
    for path in (labext, package, os.path.join(package, "static")):
        ensure_dir(path, 0o750, owner, gid)
    write_atomic(os.path.join(package, "package.json"), json.dumps(PACKAGE, indent=1).encode(), 0o640, owner, gid)
    write_atomic(os.path.join(package, "static", "remoteEntry.js"), REMOTE_ENTRY.encode(), 0o640, owner, gid)


def configure(config: dict, spec: ServerSpec, base: str) -> None:
    """Point the lab server apps (JupyterLab, Notebook 7) at the extension `install` wrote; traitlets
    applies the LabServerApp section to both. An admin's own extra paths stay, after ours."""
    if not elsewhere(spec.settings.frame_ancestors):
        return
    lab = config.setdefault("LabServerApp", {})
    given = lab.get("extra_labextensions_path", [])
    given = given if isinstance(given, list) else [given]  # one path given bare: still theirs, after ours
    theirs = [p for p in given if p != _labextensions(base)]
    lab["extra_labextensions_path"] = [_labextensions(base), *theirs]
