"""Reaching a server from a laptop: nginx in front (rendered by notebookd), tokens, passwords, the
CSP header, shared kernels, and a real browser (headless Chromium) running a cell through nginx.

One daemon and one nginx serve the whole module: alice logs in with a token, bob with a password.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import uuid

import pytest

from conftest import Daemon, as_user, free_ports, http, needs_root, wait_for
from webclient import NGINX, execute, run_code, start_nginx

pytestmark = needs_root

BOB_PASSWORD = "correct horse battery staple"
OLD_PASSWORD = "jupyter-1.23 still works"
DEBIAN_PYTHON = "/usr/bin/python3"

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
proxy: {{listen: "127.0.0.1:{proxy_port}", server_name: _}}
kernels:
  debian-py:
    display_name: Debian Python
    python: {debian_python}
users:
  {alice}: {{frame_ancestors: ["'self'", "https://lms.example.org"]}}
  {bob}: {{auth: password}}
  {old}: {{auth: both, command: [{debian_python}, -m, jupyter_server]}}
"""


def cli(daemon: Daemon, *args: str, user: str | None = None, stdin: str | None = None):
    """`notebookd ARGS` as `user`, with `stdin` piped in (not a tty)."""
    env = dict(daemon.env)
    if user:
        pw = pwd.getpwnam(user)
        env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
    return subprocess.run([sys.executable, "-m", "notebookd", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=120, cwd="/", **as_user(user))


@pytest.fixture(scope="module")
def lab(users, workdir):
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (apt-get install nginx; tests/run installs it)")
    # names of their own: other test runs on this machine create (and delete) nbtalice and nbtbob
    alice, bob, old = users("axalice"), users("axbob"), users("axold")
    *auto, proxy_port = free_ports(12, 24000)
    low = auto[0]
    daemon = Daemon(workdir, CONFIG.format(low=low, high=auto[-1], proxy_port=proxy_port, alice=alice.pw_name,
                                           bob=bob.pw_name, old=old.pw_name, debian_python=DEBIAN_PYTHON))
    daemon.start(wait_ready=False)
    nginx = None
    try:
        daemon.alice, daemon.bob, daemon.old = alice.pw_name, bob.pw_name, old.pw_name
        daemon.wait_state(alice.pw_name, "running")
        # bob's auth is password and he has none yet: his server must not start without one
        row = daemon.wait_state(bob.pw_name, ("backoff", "crashloop"))
        assert "no password" in row["last_error"] and f"notebookd passwd {bob.pw_name}" in row["last_error"]
        out = cli(daemon, "passwd", user=bob.pw_name, stdin=f"{BOB_PASSWORD}\n{BOB_PASSWORD}\n")
        assert out.returncode == 0, out.stderr
        out = cli(daemon, "passwd", old.pw_name, stdin=f"{OLD_PASSWORD}\n")  # root sets it for him
        assert out.returncode == 0, out.stderr
        daemon.wait_state(bob.pw_name, "running")
        daemon.wait_state(old.pw_name, "running")
        rendered = cli(daemon, "render", "nginx")
        assert rendered.returncode == 0, rendered.stderr
        daemon.rendered = rendered.stdout
        nginx = start_nginx(workdir, rendered.stdout)
        daemon.proxy = f"http://127.0.0.1:{proxy_port}"
        wait_for(lambda: nginx.poll() is not None or http(daemon.proxy + "/")[0] == 404, 20, what="nginx")
        assert nginx.poll() is None, open(f"{workdir}/nginx-error.log").read()
        yield daemon
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(20)
        daemon.stop()


def proxied(lab, name: str) -> str:
    return f"{lab.proxy}/user/{name}/"


# ---- through nginx ----

def test_rendered_nginx_config_has_a_location_per_user_and_the_websocket_upgrade(lab):
    text = lab.rendered
    for name in (lab.alice, lab.bob, lab.old):
        assert f"location /user/{name}/ {{" in text
    for line in ("proxy_set_header Upgrade $http_upgrade;", "proxy_set_header Host $http_host;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_read_timeout 1d;"):
        assert text.count(line) == 3, line


def test_kernel_over_rest_and_websocket_through_nginx(lab):
    base = proxied(lab, lab.alice)
    # Origin as a browser on the proxy's address sends it: jupyter's Host/Origin check must pass
    assert run_code(base, lab.token(lab.alice), "6*7", origin=lab.proxy) == "42"


def test_browser_cookies_work_from_the_proxys_origin_and_not_from_another(lab):
    """What jupyter's Origin check guards: a page elsewhere riding on the user's login cookie."""
    from http.cookiejar import CookieJar
    import urllib.request

    base, token = proxied(lab, lab.alice), lab.token(lab.alice)
    jar = CookieJar()
    urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(base + f"lab?token={token}").read()
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
    assert "username-" in cookie, "the token login set a cookie"
    status, body, _ = http(base + "api/kernels", token, method="POST", body=b"{}")
    kernel = json.loads(body)["id"]
    ws = base.replace("http", "ws", 1) + f"api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
    try:
        assert asyncio.run(execute(ws, None, "6*7", origin=lab.proxy, cookie=cookie)) == "42"
        with pytest.raises(Exception, match="403"):
            asyncio.run(execute(ws, None, "6*7", origin="https://evil.example.com", cookie=cookie))
    finally:
        http(base + f"api/kernels/{kernel}", token, method="DELETE")


def test_proxy_reaches_each_user_only_with_their_own_credentials(lab):
    alice = proxied(lab, lab.alice)
    assert http(alice + "api/kernels", lab.token(lab.alice))[0] == 200
    assert http(alice + "api/kernels")[0] == 403
    assert http(alice + "api/kernels", cli(lab, "token", lab.bob).stdout.strip())[0] == 403


# ---- tokens ----

def test_url_prints_the_token_for_token_auth_and_none_for_password_auth(lab):
    assert "?token=" in cli(lab, "url", user=lab.alice).stdout
    out = cli(lab, "url", user=lab.bob)
    # the UI there is (JupyterLab here) under the user's base URL, no token
    assert out.returncode == 0 and "token" not in out.stdout and f"/user/{lab.bob}/" in out.stdout


def test_token_rotate_replaces_the_token_and_restarts_only_that_server(lab):
    rows = lab.rows()
    old_token, bob_pid = lab.token(lab.alice), rows[lab.bob]["pid"]
    base = rows[lab.alice]["local_url"]
    cookie = token_login(base, old_token)
    assert http_cookie(base + "api/kernels", cookie)[0] == 200
    out = cli(lab, "token", "--rotate", user=lab.alice)
    assert out.returncode == 0, out.stderr
    new_token = out.stdout.strip()
    assert new_token != old_token and len(new_token) >= 32
    lab.wait_replaced(lab.alice, rows[lab.alice]["pid"])
    assert http(base + "api/kernels", new_token)[0] == 200
    assert http(base + "api/kernels", old_token)[0] == 403
    assert http_cookie(base + "api/kernels", cookie)[0] == 403, "a browser logged in with the old token is out"
    assert lab.rows()[lab.bob]["pid"] == bob_pid, "bob's server was not touched"


def token_login(base: str, token: str) -> str:
    """The cookies a browser gets when it opens `base` with ?token=."""
    import urllib.request
    from http.cookiejar import CookieJar

    jar = CookieJar()
    urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(base + f"api/status?token={token}").read()
    return "; ".join(f"{c.name}={c.value}" for c in jar)


def test_a_user_cannot_rotate_or_read_another_users_token(lab):
    for args in (("token", "--rotate", lab.bob), ("token", lab.bob)):
        out = cli(lab, *args, user=lab.alice)
        assert out.returncode == 1 and "permission denied" in out.stderr and not out.stdout


# ---- passwords ----

def test_password_auth_takes_the_password_and_nothing_else(lab):
    base = lab.rows()[lab.bob]["local_url"]
    assert http(base + "api/kernels")[0] == 403
    bobs_token = cli(lab, "token", lab.bob).stdout.strip()
    assert http(base + "api/kernels", bobs_token)[0] == 403, "password only: no token works"
    status, _, headers = http(base + "login")
    assert status == 200


def password_login(base: str, password: str) -> str | None:
    """Log in through the login form as a browser does (with its _xsrf cookie); the cookies, or None."""
    import re
    import urllib.error
    import urllib.parse
    import urllib.request
    from http.cookiejar import CookieJar

    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(base + "login").read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"_xsrf": xsrf, "password": password}).encode()
    try:
        opener.open(urllib.request.Request(base + "login?next=" + urllib.parse.quote(base + "api/status"),
                                           data=form)).read()
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
        return None
    cookies = "; ".join(f"{c.name}={c.value}" for c in jar)
    status, _, _ = http_cookie(base + "api/kernels", cookies)
    return cookies if status == 200 else None


def http_cookie(url: str, cookie: str) -> tuple[int, bytes, dict]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.mark.parametrize("who", ["bob", "old"])
def test_password_login_form_through_nginx(lab, who):
    """jupyter_server 2.x (bob, password) and Debian's 1.23 (old, password or token)."""
    name, password = (lab.bob, BOB_PASSWORD) if who == "bob" else (lab.old, OLD_PASSWORD)
    base = proxied(lab, name)
    assert password_login(base, "not the password") is None
    assert password_login(base, password) is not None


def test_both_takes_the_token_too_on_jupyter_1_23(lab):
    base = lab.rows()[lab.old]["local_url"]
    status, body, _ = http(base + "api", lab.token(lab.old))
    assert status == 200 and json.loads(body)["version"].startswith("1.")
    assert http(base + "api/kernels", lab.token(lab.old))[0] == 200
    assert http(base + "api/kernels")[0] == 403


def test_password_is_stored_as_argon2_only(lab):
    hash_file = os.path.join(lab.base, "state", "passwords", lab.bob)
    st = os.stat(hash_file)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
    hashed = open(hash_file).read()
    assert hashed.startswith("argon2:$argon2id$")
    # the server's copy: the user's, 0400; the config that loads it names only its path
    server_dir = os.path.join(lab.run_dir, "servers", lab.bob)
    copy = os.stat(os.path.join(server_dir, "password"))
    assert copy.st_uid == pwd.getpwnam(lab.bob).pw_uid and stat.S_IMODE(copy.st_mode) == 0o400
    assert not open(os.path.join(server_dir, "jupyter_server_config.json")).read().count("argon2")
    # the plain password is nowhere: not in state, run dir, logs or the daemon's output
    for top in (lab.base,):
        for dirpath, _, files in os.walk(top):
            for f in files:
                path = os.path.join(dirpath, f)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    with open(path, "rb") as fh:
                        data = fh.read()
                        assert BOB_PASSWORD.encode() not in data and OLD_PASSWORD.encode() not in data, path
                        if os.stat(path).st_mode & stat.S_IROTH:
                            assert hashed.encode() not in data, f"the hash in world-readable {path}"


def test_a_user_may_set_only_their_own_password(lab):
    out = cli(lab, "passwd", lab.bob, user=lab.alice, stdin="another password\n")
    assert out.returncode == 1 and "permission denied" in out.stderr
    out = cli(lab, "passwd", user=lab.alice, stdin="short\n")
    assert out.returncode == 1 and "at least 8" in out.stderr
    out = cli(lab, "passwd", user=lab.alice, stdin="one password\nanother one\n")
    assert out.returncode == 1 and "do not match" in out.stderr


def test_the_daemon_accepts_only_argon2_hashes(lab):
    from notebookd import control

    with pytest.raises(control.Refused, match="argon2id"):
        control.request(os.path.join(lab.run_dir, "control.sock"), "passwd", user=lab.bob, hash="plaintext")


# ---- the CSP header and shared kernels ----

def test_csp_frame_ancestors_as_configured_through_nginx(lab):
    _, _, headers = http(proxied(lab, lab.alice) + "api/kernels", lab.token(lab.alice))
    assert "frame-ancestors 'self' https://lms.example.org" in headers["Content-Security-Policy"]
    _, _, headers = http(proxied(lab, lab.bob) + "login")
    assert "frame-ancestors 'self'" in headers["Content-Security-Policy"]
    assert "lms.example.org" not in headers["Content-Security-Policy"]


@pytest.mark.skipif(subprocess.run([DEBIAN_PYTHON, "-c", "import ipykernel"], capture_output=True).returncode,
                    reason="needs python3-ipykernel (apt; tests/run installs it)")
def test_shared_kernel_is_offered_and_runs_without_touching_homes(lab):
    base, token = lab.rows()[lab.alice]["local_url"], lab.token(lab.alice)
    status, body, _ = http(base + "api/kernelspecs", token)
    specs = json.loads(body)["kernelspecs"]
    assert status == 200 and {"python3", "debian-py"} <= set(specs)
    assert specs["debian-py"]["spec"]["display_name"] == "Debian Python"
    assert run_code(base, token, "import sys; sys.executable", kernel_name="debian-py") == repr(DEBIAN_PYTHON)
    home = pwd.getpwnam(lab.alice).pw_dir
    assert not os.path.exists(os.path.join(home, ".local", "share", "jupyter", "kernels", "debian-py"))


# ---- a real browser ----

@pytest.fixture(scope="module")
def browser(lab):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs chromium and chromium-driver (apt; tests/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = os.path.join(lab.base, "chromium-profile")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    # leaving JupyterLab with an unsaved notebook asks "leave site?": accept, or the next page never loads
    opts.set_capability("unhandledPromptBehavior", "accept")
    drv = webdriver.Chrome(service=Service(driver, log_output=os.path.join(lab.base, "chromedriver.log")),
                           options=opts)
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


@pytest.fixture
def screenshot_on_failure(browser, lab, request):
    """NBT_KEEP=1 keeps <workdir>/<test>.png of a failed browser test."""
    yield
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else True:
        browser.save_screenshot(os.path.join(lab.base, f"{request.node.name}.png"))


def _fresh(drv) -> None:
    """A browser as a new visitor has it: off the last page (whatever it asked on leaving), no cookies
    for any site (delete_all_cookies reaches only the current page's)."""
    from selenium.common.exceptions import NoAlertPresentException, UnexpectedAlertPresentException

    try:
        drv.get("about:blank")
    except UnexpectedAlertPresentException:
        pass
    try:
        drv.switch_to.alert.accept()
    except NoAlertPresentException:
        pass
    drv.execute_cdp_cmd("Network.clearBrowserCookies", {})


def _in_lab(drv, timeout: float = 90) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(drv, timeout).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jp-main-dock-panel")))


def _notebook(user: str, name: str) -> None:
    """A notebook with one cell, `6*7`, in the user's home (theirs, as if they had made it)."""
    pw = pwd.getpwnam(user)
    path = os.path.join(pw.pw_dir, name)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                     "source": ["6*7"]}],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    with open(path, "w") as fh:
        json.dump(nb, fh)
    os.chown(path, pw.pw_uid, pw.pw_gid)


def test_browser_runs_a_cell_in_jupyterlab_through_nginx_with_the_token(lab, browser, screenshot_on_failure):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _notebook(lab.alice, "answer.ipynb")
    _fresh(browser)
    browser.get(proxied(lab, lab.alice) + f"lab/tree/answer.ipynb?token={lab.token(lab.alice)}")
    _in_lab(browser)
    wait = WebDriverWait(browser, 120)
    # the notebook's kernel is started (its session, as the server sees it) and idle
    wait_for(lambda: any(sess["path"] == "answer.ipynb" and sess["kernel"]["execution_state"] == "idle"
                         for sess in json.loads(http(proxied(lab, lab.alice) + "api/sessions",
                                                     lab.token(lab.alice))[1])), 120, what="the notebook's kernel")
    run = wait.until(lambda d: [b for b in d.find_elements(
        By.CSS_SELECTOR, "[data-command='notebook:run-cell-and-select-next']") if b.is_displayed()])
    run[0].click()
    out = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                                if e.text.strip()])
    assert out[0].strip() == "42"


def _login_form(drv, timeout: float = 60):
    """The login page's password field, once the page that shows it has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import TimeoutException

    try:
        WebDriverWait(drv, timeout).until(ec.url_contains("/login"))
        return WebDriverWait(drv, timeout).until(ec.visibility_of_element_located((By.CSS_SELECTOR,
                                                                                    "input[type=password]")))
    except TimeoutException:
        raise AssertionError(f"no login form after {timeout:g}s at {drv.current_url}: "
                             f"{drv.find_element(By.TAG_NAME, 'body').text[:300]!r}") from None


def test_browser_with_another_users_token_gets_the_login_page(lab, browser):
    from selenium.webdriver.common.by import By

    _fresh(browser)
    browser.get(proxied(lab, lab.alice) + f"lab?token={cli(lab, 'token', lab.bob).stdout.strip()}")
    assert _login_form(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel")


def test_browser_password_login(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _fresh(browser)
    browser.get(proxied(lab, lab.bob) + "lab")

    def log_in(password: str) -> None:
        """Type into the form and submit it; return once the page it was on is gone (submitting
        reloads the page: anything found before that is a stale element)."""
        field = _login_form(browser)
        field.clear()
        field.send_keys(password)
        browser.find_element(By.CSS_SELECTOR, "#login_submit, button[type=submit]").click()
        WebDriverWait(browser, 60).until(ec.staleness_of(field))

    log_in("not the password")
    assert _login_form(browser)  # the login page again, freshly loaded
    assert not browser.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel")
    log_in(BOB_PASSWORD)
    _in_lab(browser)
    assert browser.current_url.startswith(proxied(lab, lab.bob) + "lab")


def test_passwd_on_a_terminal_asks_twice_without_echo(lab):
    """What a person at a terminal sees: two prompts, and never the password."""
    import select

    master, slave = os.openpty()
    env = dict(lab.env)
    pw = pwd.getpwnam(lab.alice)
    env.update(HOME=pw.pw_dir, USER=lab.alice, LOGNAME=lab.alice)
    proc = subprocess.Popen([sys.executable, "-m", "notebookd", "passwd"], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd="/", start_new_session=True, **as_user(lab.alice))
    os.close(slave)
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no {text!r} on the terminal: {seen!r}"
            seen += os.read(master, 1024)

    secret = "typed at a terminal"
    read_until(b"New password: ")
    os.write(master, secret.encode() + b"\n")
    read_until(b"Again: ")
    os.write(master, secret.encode() + b"\n")
    assert proc.wait(60) == 0
    try:
        while select.select([master], [], [], 0.5)[0]:
            seen += os.read(master, 1024)
    except OSError:  # EIO once the child has closed its end
        pass
    os.close(master)
    assert b"password set for " + lab.alice.encode() in seen
    assert secret.encode() not in seen, "the password was echoed"
