"""The front door through real parts: nginx with the config notebookd renders (auth_request), real
PAM (users with passwords set by chpasswd, the PAM file the package ships), and headless Chromium.

One daemon, one nginx (which also serves a page on another loopback port, the "other site"), and
alice's, bob's, carol's and dave's servers serve the whole module; erin's (`start: on-demand`) waits
idle until the first request after her login. Failed logins are throttled per client
address, so tests that fail logins on purpose come from their own loopback source addresses.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import USER_PREFIX, Daemon, free_ports, http, needs_root, uid_processes, wait_for
from webclient import NGINX, run_code, start_nginx

pytestmark = needs_root

PASSWORDS = {"alice": "alice's lab pass 1", "bob": "bob's lab pass 2", "carol": "carol's lab pass 3",
             "dave": "dave's lab pass 4", "erin": "erin's lab pass 5"}
PAM_FILE = os.path.join(os.path.dirname(__file__), "..", "packaging", "debian", "notebookd.pam")
MAX_FAILURES = 3

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
proxy: {{listen: "127.0.0.1:{proxy_port}", server_name: _}}
front_door: {{enabled: true, pam_service: {service}, max_failures: {failures}, failure_delay: 4s}}
users:
  {alice}: {{}}
  {bob}: {{}}
  {carol}: {{}}
  {erin}: {{start: on-demand}}
"""

EVIL_PAGE = """<!DOCTYPE html>
<html><head><title>another site</title></head><body>
<p id="post">pending</p><p id="ws">pending</p>
<script>
const target = new URLSearchParams(location.search).get("target");
const kernel = new URLSearchParams(location.search).get("kernel");
fetch(target + "api/kernels", {method: "POST", mode: "no-cors", credentials: "include", body: "{}"})
  .then(() => document.getElementById("post").textContent = "sent",
        () => document.getElementById("post").textContent = "failed");
const ws = new WebSocket(target.replace("http", "ws") + "api/kernels/" + kernel + "/channels");
ws.onopen = () => document.getElementById("ws").textContent = "open";
ws.onclose = () => { if (document.getElementById("ws").textContent !== "open")
                       document.getElementById("ws").textContent = "refused"; };
</script></body></html>
"""


@pytest.fixture(scope="module")
def door(users, workdir):
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (tests/run installs it)")
    try:
        import pamela  # noqa: F401  (the daemon's helper imports it; tests/run installs it)
    except ImportError:
        pytest.skip("needs pamela (pip, in the test extra)")
    made = {short: users("fd" + short).pw_name for short in PASSWORDS}
    names = "\n".join(f"{made[s]}:{p}" for s, p in PASSWORDS.items())
    subprocess.run(["chpasswd"], input=names, text=True, check=True)
    # dave's account has expired: his password is right, but PAM's account stage refuses it
    subprocess.run(["chage", "-E", "0", made["dave"]], check=True)
    service = f"notebookd-test-{USER_PREFIX}"
    pam_path = f"/etc/pam.d/{service}"
    shutil.copy(PAM_FILE, pam_path)  # the file the package ships, under a name of this run's own
    *auto, proxy_port, evil_port = free_ports(10, 26000)
    daemon = Daemon(workdir, CONFIG.format(low=auto[0], high=auto[-1], proxy_port=proxy_port, service=service,
                                           failures=MAX_FAILURES, alice=made["alice"], bob=made["bob"],
                                           carol=made["carol"], erin=made["erin"]) + f"  {made['dave']}: {{}}\n")
    nginx = None
    try:
        daemon.start(wait_ready=False)  # erin's server waits idle for its first connection
        for short, name in made.items():
            daemon.wait_state(name, "idle" if short == "erin" else "running", 120)
        daemon.names = made
        daemon.proxy = f"http://127.0.0.1:{proxy_port}"
        daemon.evil = f"http://127.0.0.1:{evil_port}"
        rendered = daemon.cli("render", "nginx")
        assert rendered.returncode == 0, rendered.stderr
        daemon.rendered = rendered.stdout
        evil_root = os.path.join(workdir, "evil")
        os.makedirs(evil_root)
        with open(os.path.join(evil_root, "index.html"), "w") as fh:
            fh.write(EVIL_PAGE)
        os.chmod(evil_root, 0o755)
        os.chmod(os.path.join(evil_root, "index.html"), 0o644)
        other_site = f"server {{\n    listen 127.0.0.1:{evil_port};\n    root {evil_root};\n}}\n"
        nginx = start_nginx(workdir, rendered.stdout + other_site)
        wait_for(lambda: nginx.poll() is not None or http(daemon.proxy + "/")[0] == 200, 30, what="nginx")
        assert nginx.poll() is None, open(f"{workdir}/nginx-error.log").read()
        yield daemon
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(20)
        daemon.stop()
        os.unlink(pam_path)


class Client:
    """A browser-like HTTP client without redirects: its own cookies, its own source address."""

    def __init__(self, door, source: str = "127.0.0.1"):
        self.door, self.source = door, source
        self.cookies: dict[str, str] = {}
        parts = urllib.parse.urlsplit(door.proxy)
        self.host, self.port = parts.hostname, parts.port

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        conn = httpclient.HTTPConnection(self.host, self.port, timeout=60, source_address=(self.source, 0))
        hdrs = {"Accept": "text/html", **(headers or {})}
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            hdrs.setdefault("Origin", self.door.proxy)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            for value in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                val = rest.split(";", 1)[0]
                if "Max-Age=0" in value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = val
            return resp.status, text, resp.headers
        finally:
            conn.close()

    def login(self, short: str, password: str | None = None, csrf: bool = True, next_url: str = ""):
        status, page, _ = self.request("GET", "/_notebookd/login")
        assert status == 200, page
        field = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
        form = {"user": self.door.names[short], "password": PASSWORDS[short] if password is None else password,
                "next": next_url}
        if csrf:
            form["_csrf"] = field
        return self.request("POST", "/_notebookd/login", form)


def base(door, short: str) -> str:
    return f"/user/{door.names[short]}/"


def token(door, short: str) -> str:
    return door.token(door.names[short])


# ---- logging in and out ----

def test_the_login_page_is_a_plain_accessible_form(door):
    status, page, headers = Client(door).request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<script" not in page and 'lang="en"' in page
    for field in ("user", "password"):
        assert f'<label for="{field}">' in page and f'id="{field}"' in page
    assert 'autocomplete="current-password"' in page and 'name="_csrf"' in page
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no scripts at all


def test_login_sets_a_secure_session_cookie_and_goes_to_the_users_server(door):
    client = Client(door)
    client.request("GET", "/")
    status, _, headers = client.login("alice")
    assert status == 303 and headers["Location"] == base(door, "alice")
    cookie = [c for c in headers.get_all("Set-Cookie") if c.startswith("notebookd_session=")][0]
    for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
        assert attribute in cookie
    status, body, _ = client.request("GET", base(door, "alice") + "api/status", headers={"Accept": "*/*"})
    assert status == 200 and "last_activity" in body
    # the session is rotated at every login
    before = client.cookies["notebookd_session"]
    client.login("alice")
    assert client.cookies["notebookd_session"] != before
    old = Client(door)
    old.cookies["notebookd_session"] = before
    assert old.request("GET", base(door, "alice") + "api/status", headers={"Accept": "*/*"})[0] == 401


def test_login_keeps_the_page_it_came_from_on_the_users_own_server(door):
    client = Client(door)
    status, _, headers = client.request("GET", base(door, "alice") + "lab/tree?x=1&y=2")
    assert status == 302 and headers["Location"].startswith("/?next=")
    wanted = urllib.parse.unquote(headers["Location"].split("next=", 1)[1])
    assert wanted == base(door, "alice") + "lab/tree?x=1&y=2"
    assert client.login("alice", next_url=wanted)[2]["Location"] == wanted
    assert client.login("alice", next_url="https://evil.example.com/")[2]["Location"] == base(door, "alice")


def test_an_api_request_without_a_session_gets_401_not_the_login_page(door):
    status, body, _ = Client(door).request("GET", base(door, "alice") + "api/kernels",
                                           headers={"Accept": "application/json"})
    assert status == 401 and "log in" in body


def test_alices_session_on_bobs_server_is_403(door):
    client = Client(door)
    assert client.login("alice")[0] == 303
    for path in ("api/status", "lab", "api/kernels"):
        assert client.request("GET", base(door, "bob") + path)[0] == 403


def test_a_forged_authorization_header_is_not_passed_through(door):
    client = Client(door)
    assert client.login("alice")[0] == 303
    url = base(door, "alice") + "api/status"
    # jupyter would refuse a wrong token: a 200 means nginx sent alice's own token in its place
    for forged in ("token forged", f"token {token(door, 'bob')}", "Basic YWxpY2U6eA=="):
        assert client.request("GET", url, headers={"Authorization": forged})[0] == 200, forged
    anonymous = Client(door)
    assert anonymous.request("GET", url, headers={"Authorization": f"token {token(door, 'bob')}"})[0] == 403
    # a header of notebookd's own, sent by the client, is not believed either
    assert anonymous.request("GET", url, headers={"X-Notebookd-Token": token(door, "alice"),
                                                  "Accept": "*/*"})[0] == 401


def test_token_access_keeps_working_beside_the_front_door(door):
    url = door.proxy + base(door, "alice")
    assert http(url + "api/kernels", token(door, "alice"))[0] == 200
    assert run_code(url, token(door, "alice"), "6*7") == "42"


def test_logout_ends_the_session(door):
    client = Client(door)
    assert client.login("bob")[0] == 303
    url = base(door, "bob") + "api/status"
    assert client.request("GET", url)[0] == 200
    session = client.cookies["notebookd_session"]
    status, page, _ = client.request("GET", base(door, "bob") + "logout")  # JupyterLab's File > Log Out
    assert status == 302
    status, page, _ = client.request("GET", "/_notebookd/logout")
    field = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    assert client.request("POST", "/_notebookd/logout", {"_csrf": "wrong"})[0] == 403
    assert client.request("GET", url)[0] == 200, "a refused logout leaves the session"
    status, _, headers = client.request("POST", "/_notebookd/logout", {"_csrf": field})
    assert status == 303 and "notebookd_session" not in client.cookies
    replay = Client(door)
    replay.cookies["notebookd_session"] = session
    assert replay.request("GET", url)[0] == 302, "the old cookie opens nothing: back to the login page"


def test_the_login_post_without_its_csrf_field_or_from_another_origin_is_refused(door):
    client = Client(door, "127.0.0.5")
    status, page, _ = client.login("alice", csrf=False)
    assert status == 403 and "notebookd_session" not in client.cookies and "expired" in page
    page = client.request("GET", "/")[1]
    value = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    status, _, _ = client.request("POST", "/_notebookd/login",
                                  {"user": door.names["alice"], "password": PASSWORDS["alice"], "_csrf": value},
                                  headers={"Origin": door.evil})
    assert status == 403 and "notebookd_session" not in client.cookies
    assert client.login("alice")[0] == 303, "the same client with the field and its own Origin gets in"


def test_wrong_password_shows_the_form_again_and_n_failures_bring_a_delay(door):
    client = Client(door, "127.0.0.2")
    for attempt in range(MAX_FAILURES):
        started = time.monotonic()
        status, page, _ = client.login("carol", "not carol's password")
        assert status == 401 and "Wrong user name or password." in page and 'role="alert"' in page
        assert door.names["carol"] in page, "the user name stays filled in"
        assert time.monotonic() - started > 1.0, "pam_unix's failure delay"
    status, page, _ = client.login("carol")  # the right password, but too soon
    assert status == 429 and "Too many failed logins" in page and "notebookd_session" not in client.cookies
    # another address is throttled for carol's name too, and this address for other names
    assert Client(door, "127.0.0.3").login("carol")[0] == 429
    wait_for(lambda: client.login("carol")[0] == 303, 60, interval=0.5, what="the delay to pass")


def test_failures_from_one_address_delay_every_name_from_it(door):
    client = Client(door, "127.0.0.4")
    page = client.request("GET", "/_notebookd/login")[1]
    value = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    for name in ("nosuchuser1", "nosuchuser2", "nosuchuser3")[:MAX_FAILURES]:  # names no one has
        assert client.request("POST", "/_notebookd/login", {"user": name, "password": "guess",
                                                            "_csrf": value})[0] == 401
    assert client.login("bob")[0] == 429, "bob's right password from the same address waits"
    assert Client(door, "127.0.0.6").login("bob")[0] == 303


def test_an_expired_account_is_refused_with_the_right_password(door):
    client = Client(door, "127.0.0.7")
    status, page, _ = client.login("dave")
    assert status == 401 and "notebookd_session" not in client.cookies and "may not log in" in page
    assert "account refused by PAM" in door.daemon_log()


def test_an_unconfigured_user_cannot_log_in(door):
    client = Client(door, "127.0.0.8")
    form_page = client.request("GET", "/")[1]
    value = re.search(r'name="_csrf" value="([^"]+)"', form_page).group(1)
    started = time.monotonic()
    status, _, _ = client.request("POST", "/_notebookd/login", {"user": "root", "password": "x", "_csrf": value})
    assert status == 401 and time.monotonic() - started > 1.5, "as slow as a wrong password"


def test_a_slow_failed_pam_check_does_not_hold_up_other_requests(door):
    """pam_unix sleeps ~2 s on a failure; the daemon's loop keeps answering meanwhile."""
    client = Client(door)
    assert client.login("alice")[0] == 303
    failing = threading.Thread(target=lambda: Client(door, "127.0.0.9").login("carol", "wrong"))
    failing.start()
    try:
        wait_for(lambda: _pam_helpers(door.proc.pid), 30, interval=0.02, what="the PAM helper to run")
        assert client.request("GET", base(door, "alice") + "api/status")[0] == 200
        assert _pam_helpers(door.proc.pid), "answered while the failed check was still in its helper"
        assert os.listdir(f"/proc/{door.proc.pid}/task") == [str(door.proc.pid)], "the daemon runs no thread"
    finally:
        failing.join()
    assert Client(door, "127.0.0.9").login("carol")[0] == 303  # (clears the failure count it made)


def _pam_helpers(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"notebookd.frontdoor.pamhelper" in cmdline:
            found.append(int(entry))
    return found


# ---- a real browser ----

@pytest.fixture(scope="module")
def browser(door):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs chromium and chromium-driver (tests/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={door.base}/chromium-profile",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver, log_output=os.path.join(door.base, "chromedriver.log")),
                           options=opts)
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


def _wait(drv, predicate, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(predicate)


def _browser_login(door, drv, short: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    drv.delete_all_cookies()
    drv.get(door.proxy + "/")
    drv.find_element(By.ID, "user").send_keys(door.names[short])
    drv.find_element(By.ID, "password").send_keys(password)
    old = drv.find_element(By.TAG_NAME, "html")
    drv.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(drv, lambda d: _stale(old))


def _stale(element) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        element.tag_name
        return False
    except StaleElementReferenceException:
        return True


def _notebook(user: str, name: str) -> None:
    import pwd

    pw = pwd.getpwnam(user)
    path = os.path.join(pw.pw_dir, name)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                     "source": ["6*7"]}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(path, "w") as fh:
        json.dump(nb, fh)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def test_browser_logs_in_with_the_unix_password_and_runs_a_cell(door, browser):
    from selenium.webdriver.common.by import By

    alice = door.names["alice"]
    _notebook(alice, "front.ipynb")
    _browser_login(door, browser, "alice", PASSWORDS["alice"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel"))
    assert browser.current_url.startswith(door.proxy + base(door, "alice"))
    assert "token" not in browser.current_url
    browser.get(door.proxy + base(door, "alice") + "lab/tree/front.ipynb")
    url = door.proxy + base(door, "alice") + "api/sessions"
    wait_for(lambda: any(s["path"].endswith("front.ipynb") and s["kernel"]["execution_state"] == "idle"
                         for s in json.loads(http(url, token(door, "alice"))[1])), 120, what="the notebook's kernel")
    run = _wait(browser, lambda d: [b for b in d.find_elements(
        By.CSS_SELECTOR, "[data-command='notebook:run-cell-and-select-next']") if b.is_displayed()])
    run[0].click()
    out = _wait(browser, lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                                    if e.text.strip()])
    assert out[0].strip() == "42"
    # JupyterLab's own requests are unsafe methods and WebSockets from the front door's origin: allowed
    assert "refused" not in _refusals(door)


def _refusals(door) -> str:
    return "\n".join(line for line in door.daemon_log().splitlines() if "front door: refused" in line)


def test_browser_wrong_password_shows_a_message(door, browser):
    from selenium.webdriver.common.by import By

    _browser_login(door, browser, "bob", "not bob's password")
    message = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=alert]"))
    assert "Wrong user name or password." in message[0].text
    assert browser.find_element(By.ID, "user").get_attribute("value") == door.names["bob"]
    assert not browser.get_cookie("notebookd_session")
    # the right password next: in (and bob's failure count is cleared)
    browser.find_element(By.ID, "password").send_keys(PASSWORDS["bob"])
    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait(browser, lambda d: _stale(old) and d.get_cookie("notebookd_session"))
    assert browser.current_url.startswith(door.proxy + base(door, "bob"))


def test_a_page_on_another_origin_cannot_use_alices_session(door, browser):
    """Same site (127.0.0.1, another port), so SameSite=Lax sends the cookie: the Origin check stops it."""
    from selenium.webdriver.common.by import By

    alice_url = door.proxy + base(door, "alice")
    status, body, _ = http(alice_url + "api/kernels", token(door, "alice"), method="POST", body=b"{}")
    assert status == 201
    kernel = json.loads(body)["id"]
    try:
        _browser_login(door, browser, "alice", PASSWORDS["alice"])
        assert browser.get_cookie("notebookd_session")
        before = {k["id"] for k in json.loads(http(alice_url + "api/kernels", token(door, "alice"))[1])}
        browser.get(door.evil + "/?" + urllib.parse.urlencode({"target": alice_url, "kernel": kernel}))
        _wait(browser, lambda d: d.find_element(By.ID, "post").text != "pending"
              and d.find_element(By.ID, "ws").text != "pending")
        assert browser.find_element(By.ID, "ws").text == "refused"
        after = {k["id"] for k in json.loads(http(alice_url + "api/kernels", token(door, "alice"))[1])}
        assert after == before, "a kernel was created from another origin"
        refusals = _refusals(door)
        assert f"Origin {door.evil}" in refusals and "POST" in refusals
        # the same script from the front door's own origin does both: the check is what stopped it
        browser.get(alice_url + "lab")  # (not an API page: jupyter gives those CSP default-src 'none')
        status = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0] + 'api/kernels', {method: 'POST', credentials: 'include', body: '{}'})"
            ".then(r => done(r.status), e => done(String(e)));", alice_url)
        assert status == 201
        opened = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const ws = new WebSocket(arguments[0].replace('http', 'ws') + 'api/kernels/' + arguments[1] + '/channels');"
            "ws.onopen = () => { ws.close(); done('open'); }; ws.onclose = () => done('refused');", alice_url, kernel)
        assert opened == "open"
    finally:
        for k in json.loads(http(alice_url + "api/kernels", token(door, "alice"))[1]):
            http(alice_url + f"api/kernels/{k['id']}", token(door, "alice"), method="DELETE")


def test_an_idle_users_server_is_started_by_the_first_request_after_login(door, browser):
    """erin (`start: on-demand`) has no process when she logs in; the login itself starts nothing, and
    the browser's first request to her URL (the login's redirect) starts her server through the
    socket the daemon holds, and is answered by it: her own JupyterLab."""
    from selenium.webdriver.common.by import By

    erin = door.names["erin"]
    uid = pwd.getpwnam(erin).pw_uid
    row = door.wait_state(erin, "idle")
    assert row["pid"] is None and uid_processes(uid) == []
    client = Client(door, "127.0.0.10")
    status, _, headers = client.login("erin")  # her real password, through PAM
    assert status == 303 and headers["Location"] == base(door, "erin")
    assert door.rows()[erin]["state"] == "idle" and uid_processes(uid) == [], "the login alone starts nothing"
    assert f"{erin}: idle -> " not in door.daemon_log()
    # the browser takes that session and follows the redirect: the first request to erin's server
    browser.delete_all_cookies()
    browser.get(door.proxy + "/_notebookd/login")  # (a cookie is set for the page's own origin)
    browser.add_cookie({"name": "notebookd_session", "value": client.cookies["notebookd_session"], "path": "/",
                        "httpOnly": True, "secure": True, "sameSite": "Lax"})
    browser.get(door.proxy + headers["Location"])
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel"), 180)
    assert browser.current_url.startswith(door.proxy + base(door, "erin") + "lab")
    row = door.rows()[erin]
    assert row["state"] == "running" and row["pid"] in uid_processes(uid)
    assert f"{erin}: idle -> starting" in door.daemon_log()


def test_no_password_or_token_in_any_log(door):
    secrets_ = list(PASSWORDS.values()) + [token(door, s) for s in ("alice", "bob", "carol")]
    logs = [os.path.join(door.base, n) for n in ("daemon.log", "nginx-access.log", "nginx-error.log")]
    logs += [os.path.join(door.base, "logs", n) for n in os.listdir(os.path.join(door.base, "logs"))]
    logs = [p for p in logs if stat.S_ISREG(os.lstat(p).st_mode)]  # the servers' logs, not their FIFOs
    assert len(logs) >= 7, logs
    for path in logs:
        with open(path, "rb") as fh:
            data = fh.read()
        for secret in secrets_:
            assert secret.encode() not in data, f"{secret[:4]}… in {path}"
    assert "front door: failed login for" in door.daemon_log()
