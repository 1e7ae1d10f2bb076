"""The applications a server command may run: jupyter_server's ServerApp (1.23, 2.x, and JupyterLab,
notebook 7, nbclassic on it) and the classic notebook 6's own NotebookApp (Debian 12's
python3-notebook), each driven with its own settings; anything else refused before it starts.

The pure part (what a probe answer means, the argv and config per application) runs in the fast
tier. The rest runs Debian's real notebook 6 as real useradd users under one notebookd with TLS:
`python3 -m notebook` (token) and `jupyter notebook` (password), beside a user whose command is not a
Jupyter server and one whose command is a fake app, both refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import pytest

from notebookd import jupyter, launcher
from notebookd.config import TLS, Health, Logs, Restart, ServerSettings
from notebookd.model import Account, ServerSpec

DEBIAN_PYTHON = "/usr/bin/python3"


def _spec(**settings) -> ServerSpec:
    return ServerSpec(
        account=Account("alice", 1001, 1001, (), "/home/alice", "/bin/bash"), ip="127.0.0.1", port=8801,
        base_url="/user/alice/", root_dir="/home/alice",
        settings=dataclasses.replace(ServerSettings(), **settings),
        restart=Restart(), health=Health(), logs=Logs(dir="/tmp"), tls=TLS(),
    )


# ---- what a probe answer means (fast tier) ----

NB6 = jupyter.ServerKind(6, "/tree", jupyter.NOTEBOOK_APP)


@pytest.mark.parametrize("answer, kind", [
    ({"module": "notebook", "notebook": "6.4.12", "server": "1.23.3", "nbclassic": "0.3.2"}, NB6),
    ({"module": "notebook.notebookapp", "notebook": "6.5.4", "server": ""}, NB6),  # jupyter-notebook 6
    ({"module": "notebook.app", "notebook": "7.6.3", "server": "2.21.1", "lab": "4.6.6"},
     jupyter.ServerKind(2, "/tree")),  # notebook 7 is a jupyter_server extension
    ({"module": "jupyterlab.labapp", "server": "2.21.1", "lab": "4.6.6"}, jupyter.ServerKind(2, "/lab")),
    ({"module": "nbclassic.notebookapp", "server": "1.23.3", "nbclassic": "0.3.2", "lab": "4.0"},
     jupyter.ServerKind(1, "/tree")),
    ({"module": "jupyter_server", "server": "1.23.3", "nbclassic": "0.3.2"}, jupyter.ServerKind(1, "/tree")),
    ({"module": "jupyter_server.serverapp", "server": "2.21.1", "lab": "4.6.6"}, jupyter.ServerKind(2, "/lab")),
    ({"module": "jupyter_server", "server": "2.21.1"}, jupyter.ServerKind(2, None)),
])
def test_each_known_application_is_driven_as_what_it_is(answer, kind):
    assert jupyter.kind_from_probe(answer, "command 'x'") == kind


@pytest.mark.parametrize("answer, found", [
    ({"module": "http.server", "server": "2.21.1"}, "runs http.server, not a Jupyter server"),
    ({"module": "", "server": "2.21.1"}, "runs no known module"),
    ({"module": "jupyter_core.command", "server": "2.21.1"}, "runs jupyter_core.command"),
    ({"module": "notebook", "notebook": "5.7.10"}, "runs notebook 5.7 (notebookd drives notebook 6.4 and later)"),
    ({"module": "notebook", "notebook": "6.0.3"}, "runs notebook 6.0"),
    ({"module": "jupyterlab", "lab": "2.3.2", "notebook": "6.4.12"}, "runs JupyterLab 2 on the notebook server"),
    ({"module": "jupyter_server", "server": ""}, "its interpreter has no jupyter_server"),
    (None, "its interpreter did not say what it runs"),
    ([], "its interpreter did not say what it runs"),
])
def test_an_application_notebookd_cannot_drive_is_refused_in_one_line(answer, found):
    with pytest.raises(jupyter.Undrivable) as exc:
        jupyter.kind_from_probe(answer, "command '/usr/bin/python3 -m x'")
    message = str(exc.value)
    assert message.startswith("command '/usr/bin/python3 -m x': ") and found in message, message
    assert message.endswith(jupyter.INSTEAD) and "\n" not in message


def test_a_forged_answer_yields_only_known_values():
    """The probe runs as the user, who could forge its answer: only a known application, a small major
    and a known path come out of it, whatever it says."""
    forged = [{"module": "notebook", "notebook": "6.4\n--ServerApp.port=1"}, {"module": "jupyter_server", "server": "99999"},
              {"module": "jupyter_server", "server": {"x": 1}}, {"module": ["notebook"], "notebook": "6.4"},
              {"module": "jupyter_server\x1b[2J", "server": "2"}]
    for answer in forged:
        try:
            kind = jupyter.kind_from_probe(answer, "command 'x'")
        except jupyter.Undrivable as exc:
            assert str(exc).isprintable(), answer
            continue
        assert kind.app in (jupyter.SERVER_APP, jupyter.NOTEBOOK_APP) and 1 <= kind.major <= 99, answer
        assert kind.default_url in (None, "/lab", "/tree"), answer


@pytest.mark.parametrize("words, target", [
    (["/usr/bin/python3", "-m", "notebook"], {"module": "notebook"}),
    (["/usr/bin/python3", "-I", "-m", "jupyter_server", "--debug"], {"module": "jupyter_server"}),
    (["/usr/bin/python3", "/opt/tools/serve.py"], {"script": "/opt/tools/serve.py"}),
    (["/usr/bin/python3", "-c", "import notebook"], {}),
    (["/usr/bin/jupyter-notebook"], {"script": "/usr/bin/jupyter-notebook"}),
])
def test_what_the_probe_looks_up_for_a_command(words, target):
    assert jupyter.target(words) == target


def test_the_probe_names_the_module_of_a_scripts_entry_point():
    """The probe's text, run here on this interpreter: pytest's own console script names its module."""
    out = subprocess.run([sys.executable, "-I", "-c", jupyter.PROBE, json.dumps({"script": "/x/bin/pytest"})],
                         capture_output=True, text=True, check=True)
    from importlib.metadata import entry_points

    (pytest_script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "pytest"]
    assert json.loads(out.stdout)["module"] == pytest_script.module != ""


# ---- notebook 6's own settings (fast tier) ----

def test_notebook6_gets_notebookapp_flags_and_no_serverapp_ones():
    spec = _spec(command=(DEBIAN_PYTHON, "-m", "notebook"), args=("--debug",))
    argv = jupyter.argv(spec, "/run/x/jupyter_server_config.json", list(spec.settings.command), NB6)
    assert argv[:4] == [DEBIAN_PYTHON, "-m", "notebook", "--config=/run/x/jupyter_server_config.json"]
    assert "--NotebookApp.port=8801" in argv and "--NotebookApp.port_retries=0" in argv
    assert "--NotebookApp.ip=127.0.0.1" in argv and "--NotebookApp.base_url=/user/alice/" in argv
    assert "--NotebookApp.open_browser=False" in argv and argv[-1] == "--debug"
    assert not [w for w in argv if w.startswith(("--ServerApp", "--port"))]


def test_notebook6_config_is_on_notebookapp_with_its_own_names():
    from notebookd.access import ServerAccess

    admin = json.dumps({"ServerApp": {"iopub_data_rate_limit": 1e7, "port": 1}})
    config = jupyter.server_config(_spec(frame_ancestors=("'self'", "https://lms.example.org"), jupyter_config=admin),
                                   NB6, ServerAccess(token_file="/t", password_file="/p", certfile="/c", keyfile="/k"))
    app = config["NotebookApp"]
    assert "ServerApp" not in config and "PasswordIdentityProvider" not in config
    assert app["notebook_dir"] == "/home/alice" and "root_dir" not in app
    assert (app["port"], app["port_retries"], app["ip"]) == (8801, 0, "127.0.0.1")
    assert app["iopub_data_rate_limit"] == 1e7, "the admin's ServerApp extras reach notebook 6"
    assert app["tornado_settings"]["headers"]["Content-Security-Policy"] == \
        "frame-ancestors 'self' https://lms.example.org"
    assert (app["certfile"], app["keyfile"], app["allow_password_change"]) == ("/c", "/k", False)
    assert "password" not in app, "the hash comes from the loader, never from the JSON"
    assert "c.NotebookApp.password = _hash" in jupyter.password_loader(NB6, "/p")
    password_only = jupyter.server_config(_spec(), NB6, ServerAccess(password_file="/p"))["NotebookApp"]
    assert password_only["token"] == ""


def test_the_launcher_is_told_the_application_and_runs_a_jupyter_subcommand_as_given():
    """`jupyter notebook` reaches wrap already as /usr/bin/jupyter-notebook (preflight.py found it as the
    user): the launcher runs what it is given, and knows which class to hand the socket to."""
    argv = launcher.wrap(["/usr/bin/jupyter-notebook", "--config=/c"], 7, 2.5, DEBIAN_PYTHON, "NotebookApp")
    assert argv[:2] == [DEBIAN_PYTHON, "-I"] and argv[-2:] == ["/usr/bin/jupyter-notebook", "--config=/c"]
    assert "--app=NotebookApp" in argv and "--listen-fd=7" in argv
    assert launcher._parse(["--listen-fd=7", "--app=NotebookApp", "-m", "notebook"]) == \
        (7, launcher.DEFAULT_DRAIN, "NotebookApp", ["-m", "notebook"])


# ---- Debian's notebook 6 under notebookd, as real users (root tier) ----

def _debian_notebook() -> str:
    out = subprocess.run([DEBIAN_PYTHON, "-I", "-c", "import notebook; print(notebook.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


needs_notebook6 = pytest.mark.skipif(
    not _debian_notebook().startswith("6.") or not os.path.exists("/usr/bin/jupyter-notebook"),
    reason="needs Debian's notebook 6 (apt: python3-notebook jupyter-notebook jupyter-core; tests/run installs them)")

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
tls: {{mode: self-signed}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
restart: {{backoff_min: 1s, backoff_max: 5s}}
kernels:
  debian-py: {{display_name: Debian Python, python: {python}}}
server: {{frame_ancestors: ["'self'", "https://lms.example.org"]}}
users:
  {tok}: {{command: [{python}, -m, notebook]}}
  {pw}: {{command: [jupyter, notebook], auth: password}}
  {taken}: {{port: {taken_port}, command: [jupyter-notebook]}}
  {http}: {{command: [{python}, -m, http.server]}}
  {fake}: {{command: [{{base}}/jupyter-fake]}}
  {nbc}: {{command: [jupyter, nbclassic]}}
{nb7_entry}"""

# PyPI's notebook 7 (on the test venv's jupyter_server 2.x) is in the test extra (pyproject.toml)
NOTEBOOK7_SCRIPT = os.path.join(os.path.dirname(sys.executable), "jupyter-notebook")

PASSWORD = "classic notebook, new rules"

# what a user's own ~/.jupyter would do to a notebook 6 it reads: another port, no auth, any framer
HOSTILE_JSON = {"NotebookApp": {"port": 8888, "port_retries": 50, "token": "", "password": "", "ip": "0.0.0.0",
                                "disable_check_xsrf": True, "base_url": "/elsewhere/",
                                "tornado_settings": {"headers": {"Content-Security-Policy": "frame-ancestors *"}}}}
HOSTILE_PY = "open(__import__('os').path.expanduser('~/config-py-ran'), 'w').close()\nc.NotebookApp.token = ''\n"

# a Python program that says it is Jupyter and would serve on 8888
FAKE_APP = ("#!/usr/bin/python3\nimport http.server\n"
            "http.server.HTTPServer(('127.0.0.1', 8888), http.server.SimpleHTTPRequestHandler).serve_forever()\n")


@pytest.fixture(scope="module")
def nb6(users, workdir):
    from conftest import Daemon, as_user, free_ports

    names = {k: users(k).pw_name for k in ("k6tok", "k6pw", "k6taken", "k6http", "k6fake", "k6nbc", "k6nb7")}
    nb7_entry = f"  {names['k6nb7']}: {{command: [{NOTEBOOK7_SCRIPT}]}}\n" if os.path.exists(NOTEBOOK7_SCRIPT) else ""
    tok = users("k6tok")
    jdir = os.path.join(tok.pw_dir, ".jupyter")
    subprocess.run(["mkdir", "-p", jdir], check=True, **as_user(tok.pw_name))
    for name, text in (("jupyter_notebook_config.json", json.dumps(HOSTILE_JSON)),
                       ("jupyter_notebook_config.py", HOSTILE_PY)):
        subprocess.run(["/bin/sh", "-c", f"cat > {jdir}/{name}"], input=text, text=True, check=True,
                       **as_user(tok.pw_name))
    with open(os.path.join(workdir, "jupyter-fake"), "w") as fh:
        fh.write(FAKE_APP)
    os.chmod(os.path.join(workdir, "jupyter-fake"), 0o755)
    *auto, taken_port = free_ports(9, 27000)
    blocker = socket.socket()  # someone else's process on the port eve was given
    blocker.bind(("127.0.0.1", taken_port))
    blocker.listen(1)
    daemon = Daemon(workdir, CONFIG.format(low=auto[0], high=auto[-1], python=DEBIAN_PYTHON, taken_port=taken_port,
                                           tok=names["k6tok"], pw=names["k6pw"], taken=names["k6taken"],
                                           http=names["k6http"], fake=names["k6fake"], nbc=names["k6nbc"],
                                           nb7_entry=nb7_entry))
    daemon.names, daemon.taken_port, daemon.blocker, daemon.ports = names, taken_port, blocker, set(auto)
    daemon.start(wait_ready=False)
    try:
        # root sets it for the user (not a tty: one line from stdin)
        out = subprocess.run([sys.executable, "-m", "notebookd", "passwd", names["k6pw"]], env=daemon.env,
                             input=f"{PASSWORD}\n", capture_output=True, text=True, timeout=120, cwd="/")
        assert out.returncode == 0, out.stderr
        for key in ("k6tok", "k6pw", "k6nbc") + (("k6nb7",) if nb7_entry else ()):
            daemon.wait_state(names[key], "running", timeout=180)
        yield daemon
    finally:
        blocker.close()
        daemon.stop()


def _cafile(lab, name: str) -> str:
    return os.path.join(lab.base, "state", "tls", f"user-{name}.crt")


def _https(lab, name: str, path: str, token: str | None = None, method: str = "GET", body: bytes | None = None,
           cookie: str | None = None):
    """A request to `name`'s server over TLS verified against its own certificate."""
    base = lab.rows()[name]["url"]
    req = urllib.request.Request(base + path, method=method, data=body)
    if token:
        req.add_header("Authorization", f"token {token}")
    if cookie:
        req.add_header("Cookie", cookie)
    ctx = ssl.create_default_context(cafile=_cafile(lab, name))
    try:
        with urllib.request.urlopen(req, timeout=20, context=ctx) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _listening(uid: int) -> dict[int, set[int]]:
    """{pid: TCP ports it listens on} for every process of `uid`."""
    import psutil

    from conftest import uid_processes

    found = {}
    for pid in uid_processes(uid):
        try:
            proc = psutil.Process(pid)
            conns = (getattr(proc, "net_connections", None) or proc.connections)(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[pid] = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
    return found


@needs_notebook6
@pytest.mark.root
def test_notebook6_runs_on_its_assigned_port_and_nowhere_else(nb6):
    import pwd

    for key in ("k6tok", "k6pw"):
        name = nb6.names[key]
        row = nb6.rows()[name]
        assert row["state"] == "running" and row["port"] in nb6.ports, row
        assert row["url"] == f"https://127.0.0.1:{row['port']}/user/{name}/", row
        status, body, _ = _https(nb6, name, "api")  # the readiness probe's path: 200 without auth
        assert status == 200 and json.loads(body)["version"].startswith("6."), body
        listening = _listening(pwd.getpwnam(name).pw_uid)
        assert listening[row["pid"]] == {row["port"]}, listening  # the socket it was handed, nothing else
        assert all(8888 not in ports for ports in listening.values()), listening


@needs_notebook6
@pytest.mark.root
@pytest.mark.parametrize("key, version", [("k6nbc", "1."), ("k6nb7", "2.")])
def test_nbclassic_and_notebook7_keep_running_on_jupyter_server(nb6, key, version):
    """`jupyter nbclassic` (Debian's, on 1.23) and PyPI's notebook 7 `jupyter-notebook` (on 2.x) are
    ServerApp: driven as jupyter_server, on the held socket, landing on /tree."""
    import pwd

    if key == "k6nb7" and not os.path.exists(NOTEBOOK7_SCRIPT):
        pytest.skip("needs notebook 7 in the test venv (the test extra has it)")
    name = nb6.names[key]
    row = nb6.rows()[name]
    token = nb6.token(name)
    status, body, _ = _https(nb6, name, "api", token)
    assert status == 200 and json.loads(body)["version"].startswith(version), body
    assert _https(nb6, name, "api/kernels", token)[0] == 200 and _https(nb6, name, "api/kernels")[0] == 403
    assert nb6.url(name).startswith(row["url"] + "tree?token=")
    status, body, _ = _https(nb6, name, "tree", token)
    assert status == 200 and b"<html" in body.lower()
    assert _listening(pwd.getpwnam(name).pw_uid)[row["pid"]] == {row["port"]}


@needs_notebook6
@pytest.mark.root
def test_notebookds_token_opens_notebook6_and_nothing_else_does(nb6):
    name = nb6.names["k6tok"]
    token = nb6.token(name)
    assert _https(nb6, name, "api/kernels", token)[0] == 200
    assert _https(nb6, name, "api/kernels")[0] == 403
    assert _https(nb6, name, "api/kernels", "not-" + token)[0] == 403
    assert nb6.url(name).startswith(nb6.rows()[name]["url"] + "tree?token="), "notebook 6's landing page"
    status, body, _ = _https(nb6, name, "tree", token)
    assert status == 200 and b"<html" in body.lower()


@needs_notebook6
@pytest.mark.root
def test_the_users_own_jupyter_config_is_not_read(nb6):
    """~/.jupyter asked for port 8888, no token, another base_url, any framer, and ran Python: none of it."""
    import pwd

    name = nb6.names["k6tok"]
    home = pwd.getpwnam(name).pw_dir
    assert not os.path.exists(os.path.join(home, "config-py-ran"))
    assert _https(nb6, name, "api/kernels")[0] == 403
    csp = _https(nb6, name, "api/kernels", nb6.token(name))[2]["Content-Security-Policy"]
    assert "frame-ancestors *" not in csp


@needs_notebook6
@pytest.mark.root
def test_csp_frame_ancestors_on_notebook6_pages_and_api(nb6):
    name = nb6.names["k6tok"]
    for path in ("tree", "api/kernels"):
        status, _, headers = _https(nb6, name, path, nb6.token(name))
        assert status == 200
        assert "frame-ancestors 'self' https://lms.example.org" in headers["Content-Security-Policy"], path


@needs_notebook6
@pytest.mark.root
def test_notebook6_speaks_tls_with_its_own_certificate_only(nb6):
    name = nb6.names["k6tok"]
    port = nb6.rows()[name]["port"]
    ctx = ssl.create_default_context(cafile=_cafile(nb6, name))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    from conftest import http

    assert http(f"http://127.0.0.1:{port}/user/{name}/api/kernels", nb6.token(name))[0] != 200


def _password_login(lab, name: str, password: str) -> str | None:
    """The login form as a browser fills it (with its _xsrf cookie): the cookies if they open the API."""
    base = lab.rows()[name]["url"]
    ctx = ssl.create_default_context(cafile=_cafile(lab, name))
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=ctx))
    page = opener.open(base + "login", timeout=20).read().decode()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"_xsrf": xsrf, "password": password}).encode()
    try:
        opener.open(urllib.request.Request(base + "login?next=" + urllib.parse.quote(base + "tree"), data=form),
                    timeout=20).read()
    except urllib.error.HTTPError:
        return None
    cookies = "; ".join(f"{c.name}={c.value}" for c in jar)
    return cookies if _https(lab, name, "api/kernels", cookie=cookies)[0] == 200 else None


@needs_notebook6
@pytest.mark.root
def test_notebook6_takes_the_argon2_password_and_not_the_token(nb6):
    """`jupyter notebook` (Debian's jupyter-core runs jupyter-notebook) with auth: password."""
    name = nb6.names["k6pw"]
    with open(os.path.join(nb6.base, "state", "passwords", name)) as fh:
        assert fh.read().startswith("argon2:")
    assert _password_login(nb6, name, "not the password") is None
    assert _password_login(nb6, name, PASSWORD) is not None
    token = nb6.cli("token", name).stdout.strip()
    assert _https(nb6, name, "api/kernels", token or "x")[0] == 403, "password only: no token opens it"


@needs_notebook6
@pytest.mark.root
def test_kernels_of_notebook6_compute_over_their_websocket(nb6):
    from webclient import run_code

    name = nb6.names["k6tok"]
    base, token, cafile = nb6.rows()[name]["url"], nb6.token(name), _cafile(nb6, name)
    assert run_code(base, token, "6*7", cafile=cafile) == "42"
    # notebookd's shared kernels reach notebook 6 too (JUPYTER_PATH), and run
    assert run_code(base, token, "import sys; sys.executable", kernel_name="debian-py", cafile=cafile) == \
        repr(DEBIAN_PYTHON)


@needs_notebook6
@pytest.mark.root
def test_a_taken_port_is_an_error_naming_it_not_another_port(nb6):
    import pwd

    name = nb6.names["k6taken"]
    row = nb6.wait_state(name, ("backoff", "crashloop"))
    assert f"port {nb6.taken_port}" in row["last_error"] and "in use" in row["last_error"], row
    assert not [p for p in _listening(pwd.getpwnam(name).pw_uid).values() if p], "it listens nowhere else"


@needs_notebook6
@pytest.mark.root
def test_notebook6_binding_itself_retries_no_other_port(nb6, workdir):
    """Where the server binds its own port (the supervisor and systemd backends run notebookd's argv
    without the launcher), notebook 6 is told --NotebookApp.port_retries=0: a taken port ends it."""
    import pwd

    from conftest import as_user

    name = nb6.names["k6taken"]
    acc = pwd.getpwnam(name)
    spec = _spec(command=(DEBIAN_PYTHON, "-m", "notebook"))
    spec = dataclasses.replace(spec, port=nb6.taken_port, root_dir=acc.pw_dir,
                               account=Account(name, acc.pw_uid, acc.pw_gid, (), acc.pw_dir, "/bin/sh"))
    config = os.path.join(workdir, f"{name}-selfbind.json")
    with open(config, "w") as fh:
        json.dump(jupyter.server_config(spec, NB6), fh)
    os.chmod(config, 0o644)
    env = {"HOME": acc.pw_dir, "PATH": "/usr/bin:/bin", "JUPYTER_CONFIG_DIR": os.path.join(acc.pw_dir, "nbt-none"),
           "JUPYTER_RUNTIME_DIR": os.path.join(acc.pw_dir, "nbt-runtime")}
    out = subprocess.run(jupyter.argv(spec, config, list(spec.settings.command), NB6), env=env, cwd=acc.pw_dir,
                         capture_output=True, text=True, timeout=120, **as_user(name))
    assert out.returncode != 0 and f"port {nb6.taken_port} is not available" in out.stderr, out.stderr[-2000:]
    assert "trying another port" not in out.stderr


@needs_notebook6
@pytest.mark.root
@pytest.mark.parametrize("key, found", [("k6http", "runs http.server, not a Jupyter server"),
                                        ("k6fake", "runs no known module, not a Jupyter server")])
def test_a_command_notebookd_cannot_drive_is_refused_and_never_run(nb6, key, found):
    import pwd

    name = nb6.names[key]
    row = nb6.wait_state(name, ("backoff", "crashloop"))
    assert found in row["last_error"] and row["last_error"].endswith(jupyter.INSTEAD), row
    out = nb6.cli("check-config")
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if f"users.{name}:" in line]
    assert len(lines) == 1 and found in lines[0] and lines[0].endswith(jupyter.INSTEAD), out.stderr
    assert nb6.config_path in lines[0], "the line names the config file and line"
    assert not [line for line in out.stderr.splitlines() if any(f"users.{nb6.names[k]}:" in line
                                                                 for k in ("k6tok", "k6pw"))], out.stderr
    uid = pwd.getpwnam(name).pw_uid
    assert not [p for p in _listening(uid).values() if p], "nothing of this user's listens anywhere"
    for pid in __import__("conftest").uid_processes(uid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                words = fh.read().split(b"\0")
        except FileNotFoundError:
            continue
        assert b"http.server" not in words and not any(w.endswith(b"jupyter-fake") for w in words[:2]), words


@needs_notebook6
@pytest.mark.root
def test_stopping_notebook6_ends_its_kernels(nb6):
    """Last in this module: it stops the token user's server."""
    import pwd

    from conftest import uid_processes, wait_for

    name = nb6.names["k6tok"]
    uid = pwd.getpwnam(name).pw_uid
    status, body, _ = _https(nb6, name, "api/kernels", nb6.token(name), method="POST", body=b"{}")
    assert status == 201, body
    server = nb6.rows()[name]["pid"]
    wait_for(lambda: len(uid_processes(uid)) >= 2, 60, what="the kernel process")
    kernels = [p for p in uid_processes(uid) if p != server]
    out = nb6.cli("stop", name)
    assert out.returncode == 0, out.stderr
    nb6.wait_state(name, "stopped")
    wait_for(lambda: not (set(uid_processes(uid)) & set(kernels + [server])), 30, what="kernels gone")
