"""Embedding that stays in its frame (embed.py), in a real browser.

A page on another origin (a second port on loopback, served by the test) frames a user's server in an
iframe, as an LMS or a wiki would. With that origin in `embed.frame_ancestors` the frame loads, and a
notebook opened from the tree opens inside the frame: no new browser window, the frame's document is the
notebook. From an origin not listed the browser refuses the frame (its console says so, and the frame
never shows the server's page). Real servers as real users: nbclassic on Debian's jupyter_server 1.23,
Debian's notebook 6, and JupyterLab and Notebook 7 (one server) from the test venv; headless Chromium
through selenium.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import pwd
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Daemon, free_ports, needs_root, wait_for
from webclient import chromium

DEBIAN_PYTHON = "/usr/bin/python3"

pytestmark = needs_root


def _finds(python: str, code: str) -> bool:
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


HAS_NBCLASSIC = _finds(DEBIAN_PYTHON, "import nbclassic, jupyter_server")
HAS_NOTEBOOK6 = _finds(DEBIAN_PYTHON, "import notebook, sys; sys.exit(not notebook.__version__.startswith('6.'))")
HAS_NOTEBOOK7 = _finds(sys.executable, "import importlib.metadata as m, sys; "
                                       "sys.exit(int(m.version('notebook').split('.')[0]) < 7)")


class Site:
    """The embedding site: on each port, `/?src=URL` is a page that frames URL (and has no CSP itself)."""

    def __init__(self, ports: list[int]):
        class Page(BaseHTTPRequestHandler):
            def do_GET(self):
                src = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("src", [""])[0]
                body = (f'<!doctype html><title>embedding site</title><h1>the embedding site</h1>'
                        f'<iframe id="embedded" src="{html.escape(src, quote=True)}" width="1300" height="850">'
                        f'</iframe>').encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", port), Page) for port in ports]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.allowed, self.other = (f"http://127.0.0.1:{port}" for port in ports)

    def page(self, origin: str, src: str) -> str:
        return f"{origin}/?src={urllib.parse.quote(src, safe='')}"

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def site():
    site = Site(free_ports(2, 24000))
    yield site
    site.close()


@pytest.fixture(scope="module")
def lab(users, workdir, site):
    classic, nb6, lab = users("ec").pw_name, users("e6").pw_name, users("el").pw_name
    p1, p2, p3 = free_ports(3, 23000)
    extra = f"  {classic}: {{port: {p1}, command: [{DEBIAN_PYTHON}, -m, jupyter_server]}}\n" if HAS_NBCLASSIC else ""
    extra += f"  {nb6}: {{port: {p3}, command: [{DEBIAN_PYTHON}, -m, notebook]}}\n" if HAS_NOTEBOOK6 else ""
    daemon = Daemon(workdir, f"""\
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
embed: {{frame_ancestors: ["'self'", "{site.allowed}"]}}
users:
{extra}  {lab}: {{port: {p2}}}
""").start()
    daemon.classic, daemon.nb6, daemon.lab = classic, nb6, lab
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def browser(workdir):
    drv = chromium(workdir, console=True)
    yield drv
    drv.quit()


_names = itertools.count()


def _notebook(user: str) -> str:
    """A new notebook in the user's home (theirs, as if they had made it); a new name each time, so
    nothing a UI remembers from an earlier run (an open tab, a workspace) can pass for this one."""
    name = f"framed{next(_names)}.ipynb"
    pw = pwd.getpwnam(user)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                     "source": ["6*7"]}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = os.path.join(pw.pw_dir, name)
    with open(path, "w") as fh:
        json.dump(nb, fh)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return name


def _wait(drv, predicate, timeout: float = 120, what: str = "the page"):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(drv, timeout).until(predicate)
    except TimeoutException:
        errors = [e["message"][:300] for e in drv.get_log("browser") if e["level"] in ("SEVERE", "WARNING")][-5:]
        raise AssertionError(f"no {what} after {timeout:g}s; windows: {len(drv.window_handles)}; "
                             f"{_frame_state(drv)}; console: {errors}") from None


def _frame_state(drv) -> str:
    try:
        return f"frame at {drv.execute_script('return location.href')}"
    except Exception as exc:  # the state for a failure message only
        return f"frame unreadable ({type(exc).__name__})"


def _console(drv) -> list[str]:
    return [entry["message"] for entry in drv.get_log("browser")]


def _embed(drv, site: Site, origin: str, src: str) -> None:
    """Open the embedding page on `origin` as a new visitor would (no cookies, nothing logged before),
    and go into its frame."""
    from selenium.webdriver.common.by import By

    first, *others = drv.window_handles
    for handle in others:  # what a failed earlier test opened: a tab in front hides this one's layout
        drv.switch_to.window(handle)
        drv.close()
    drv.switch_to.window(first)
    drv.get("about:blank")
    drv.execute_cdp_cmd("Network.clearBrowserCookies", {})
    _console(drv)  # what earlier pages logged
    drv.get(site.page(origin, src))
    drv.switch_to.frame(drv.find_element(By.ID, "embedded"))


def _stayed(drv, site: Site, before: list[str]) -> None:
    """Nothing left the embedding page: the same one window, still on the site, no CSP refusal."""
    assert drv.window_handles == before, "a new browser window opened"
    drv.switch_to.default_content()
    assert drv.current_url.startswith(site.allowed + "/?src=")
    assert not [m for m in _console(drv) if "frame-ancestors" in m]


def _server_url(lab, name: str, path: str) -> str:
    """The user's server at `path` (e.g. "tree", "lab"), logged in by the token."""
    return lab.rows()[name]["url"] + f"{path}?token={lab.token(name)}"


def _classic(lab, ui: str) -> str:
    """The user whose server runs the classic UI `ui` ("nbclassic" on jupyter_server 1.23, "notebook6")."""
    if not (HAS_NBCLASSIC if ui == "nbclassic" else HAS_NOTEBOOK6):
        pytest.skip(f"needs Debian's {'python3-nbclassic' if ui == 'nbclassic' else 'python3-notebook'} "
                    "(apt; tests/run installs it)")
    return lab.classic if ui == "nbclassic" else lab.nb6


@pytest.mark.parametrize("ui", ["nbclassic", "notebook6"])
def test_classic_tree_opens_a_notebook_inside_the_frame(lab, site, browser, ui):
    from selenium.webdriver.common.by import By

    user = _classic(lab, ui)
    name = _notebook(user)
    windows = browser.window_handles
    _embed(browser, site, site.allowed, _server_url(lab, user, "tree"))
    link = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'#notebook_list a.item_link[href$="/{name}"]'),
                 what=f"{name} in the classic tree")[0]
    link.click()
    _wait(browser, lambda d: d.execute_script("return location.pathname").endswith(f"/notebooks/{name}")
          and d.find_elements(By.CSS_SELECTOR, "#notebook-container .cell"), what=f"{name} open in the frame")
    assert browser.find_element(By.ID, "notebook_name").text == name.removesuffix(".ipynb")
    _stayed(browser, site, windows)


def _open_in_listing(drv, name: str) -> None:
    """Double-click `name` in a JupyterLab-style file browser (JupyterLab's, Notebook 7's tree)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    item = _wait(drv, lambda d: [e for e in d.find_elements(
        By.XPATH, "//li[contains(@class, 'jp-DirListing-item')]"
                  f"[.//span[contains(@class, 'jp-DirListing-itemText')][normalize-space()='{name}']]")
        if e.is_displayed()], what=f"{name} shown in the file browser")[0]
    ActionChains(drv).double_click(item).perform()


def test_jupyterlab_opens_a_notebook_inside_the_frame(lab, site, browser):
    """JupyterLab opens documents in its own page: nothing to change, and the frame shows the notebook."""
    from selenium.webdriver.common.by import By

    name = _notebook(lab.lab)
    windows = browser.window_handles
    # ?reset: no workspace restored from an earlier run (its notebook open, the click racing the restore);
    # the launcher shows once the restore is done and a click on the file browser is taken
    _embed(browser, site, site.allowed, _server_url(lab, lab.lab, "lab") + "&reset")
    _wait(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".jp-Launcher") if e.is_displayed()],
          what="JupyterLab's launcher")
    _open_in_listing(browser, name)
    _wait(browser, lambda d: d.execute_script("return location.pathname").endswith(f"/lab/tree/{name}")
          and [t for t in d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel") if t.is_displayed()]
          and [t for t in d.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current "
                                                           ".lm-TabBar-tabLabel") if t.text.strip() == name],
          what=f"{name} open in JupyterLab in the frame")
    _stayed(browser, site, windows)


@pytest.mark.skipif(not HAS_NOTEBOOK7, reason="needs notebook>=7 in the test venv (pip; tests/run installs it)")
def test_notebook7_tree_opens_a_notebook_inside_the_frame(lab, site, browser):
    from selenium.webdriver.common.by import By

    name = _notebook(lab.lab)
    windows = browser.window_handles
    _embed(browser, site, site.allowed, _server_url(lab, lab.lab, "tree"))
    _open_in_listing(browser, name)
    _wait(browser, lambda d: d.execute_script("return location.pathname").endswith(f"/notebooks/{name}")
          and [t for t in d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel") if t.is_displayed()],
          what=f"{name} open in Notebook 7 in the frame")
    _stayed(browser, site, windows)


@pytest.mark.parametrize("ui", ["nbclassic", "notebook6", "lab"])
def test_a_site_not_allowed_gets_its_frame_refused_by_the_browser(lab, site, browser, ui):
    """The same servers, framed from an origin `embed.frame_ancestors` does not list: the browser refuses
    to show them (the CSP violation it logs) and the frame never holds the server's page."""
    from selenium.webdriver.common.by import By

    name = lab.lab if ui == "lab" else _classic(lab, ui)
    server = lab.rows()[name]["url"]
    _embed(browser, site, site.other, _server_url(lab, name, "lab" if ui == "lab" else "tree"))
    seen: list[str] = []

    def refusals() -> list[str]:
        seen.extend(_console(browser))  # each read takes what was logged since the last
        # Chromium 150: "Framing 'URL' violates the following Content Security Policy directive: ..."
        return [m for m in seen if "frame-ancestors" in m and ("violates" in m or "Refused" in m)]

    refused = wait_for(refusals, 60, what="the browser to refuse the frame")
    # it names the server it refused and the policy that refused it: the sites the server allows
    assert urllib.parse.urlsplit(server).netloc in refused[0] and site.allowed in refused[0], refused
    # the frame holds the browser's own error page, not the server's
    assert browser.execute_script("return location.href").startswith("chrome-error:")
    assert not browser.find_elements(By.CSS_SELECTOR, "#notebook_list, #jp-main-dock-panel, body[data-base-url]")
