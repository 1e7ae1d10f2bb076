"""Access settings without servers: the config keys and their errors, the jupyter keys they become,
the nginx text, certificate renewal, password hashes and shared kernelspecs. Pure and fast."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import stat
import textwrap

import pytest

from notebookd import config, jupyter, kernelspecs, nginx, passwords, tls
from notebookd.access import ServerAccess
from notebookd.config import TLS, Health, Kernel, Logs, Proxy, Restart, ServerSettings
from notebookd.model import Account, ServerSpec
from notebookd.paths import Layout

FILE = "/etc/notebookd/notebookd.yaml"
LAYOUT = Layout(system=True, config=FILE, config_explicit=True, run_dir="/run/nbd-test",
                state_dir="/var/lib/nbd-test", log_dir="/var/log/nbd-test")


def load(text: str) -> config.Config:
    return config.load(LAYOUT, text=textwrap.dedent(text))


def error(text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        load(text)
    return str(info.value)


# ---- config ----

def test_defaults_are_token_auth_no_tls_loopback():
    c = load("")
    assert c.server.auth == "token" and c.tls == TLS() and not c.tls.enabled
    assert c.listen.allow_insecure is False and c.proxy == Proxy() and c.kernels == ()


def test_access_keys_load():
    c = load("""\
        listen: {ip: 0.0.0.0}
        tls: {mode: self-signed, names: [lab.example.org, 10.1.2.3], valid_for: 90d, renew_before: 10d}
        proxy: {listen: "0.0.0.0:443", server_name: lab.example.org lab, cert: /etc/ssl/lab.pem,
                key: /etc/ssl/lab.key}
        server: {auth: both}
        users:
          alice: {auth: password}
          bob: {}
        kernels:
          ml: {display_name: ML, venv: /opt/venvs/ml/}
          r: {argv: [/usr/bin/R, --slave, "{connection_file}"], language: R, env: {R_LIBS: /opt/R}}
        """)
    assert c.tls == TLS(mode="self-signed", names=("lab.example.org", "10.1.2.3"), valid_for=90 * 86400.0,
                        renew_before=10 * 86400.0)
    assert c.proxy == Proxy(listen="0.0.0.0:443", server_name="lab.example.org lab", cert="/etc/ssl/lab.pem",
                            key="/etc/ssl/lab.key")
    assert [u.settings.auth for u in c.users] == ["password", "both"]
    assert c.kernels == (
        Kernel("ml", "ML", ("/opt/venvs/ml/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}")),
        Kernel("r", "r", ("/usr/bin/R", "--slave", "{connection_file}"), "R", (("R_LIBS", "/opt/R"),)),
    )


def test_bare_off_is_tls_off():
    assert load("tls: {mode: off}").tls.mode == "off"


@pytest.mark.parametrize("text, expected", [
    ("listen: {ip: 0.0.0.0}\n", "1: listen.ip: 0.0.0.0 is reachable from other machines but tls.mode is off"),
    ("listen:\n  ports: 8800-8810\n  ip: 192.168.1.5\n", "3: listen.ip: 192.168.1.5 is reachable"),
    ("listen: {ip: '::'}\n", "1: listen.ip: :: is reachable"),
    ("server: {auth: none}\n", "1: server.auth: 'none' is not one of: token, password, both"),
    ("users:\n  alice: {auth: ''}\n", "2: users.alice.auth: '' is not one of"),
    ("tls: {mode: on}\n", "1: tls.mode: True is not a mode (one of: off, self-signed, files)"),
    ("tls: {mode: acme}\n", "1: tls.mode: 'acme' is not one of: off, self-signed, files"),
    ("tls: {mode: files, cert: /etc/ssl/c.pem}\n", "1: tls: mode files needs key"),
    ("tls: {mode: self-signed, cert: /etc/ssl/c.pem}\n", "1: tls.cert: only used with mode files"),
    ("tls: {mode: files, cert: c.pem, key: /k}\n", "1: tls.cert: 'c.pem' must be an absolute path"),
    ("tls: {names: [bad_name!]}\n", "1: tls.names[0]: 'bad_name!' is neither a host name nor an IP address"),
    ("tls: {valid_for: 30d, renew_before: 30d}\n", "1: tls.renew_before: renew_before must be shorter"),
    ("tls: {valid_for: 0s}\n", "1: tls.valid_for: must be more than zero"),
    ("listen: {allow_insecure: yes please}\n", "1: listen.allow_insecure: expected true or false"),
    ("proxy: {listen: 'http://x'}\n", "1: proxy.listen: 'http://x' is not a port or ADDRESS:PORT"),
    ("proxy: {listen: 70000}\n", "1: proxy.listen: '70000' is not a port"),
    ("proxy: {server_name: 'a; include /etc/shadow'}\n", "1: proxy.server_name: "),
    ("proxy: {cert: /etc/ssl/c.pem}\n", "1: proxy: cert and key go together"),
    ("kernels: {ml: {}}\n", "1: kernels.ml: give exactly one of argv, python or venv"),
    ("kernels: {ml: {python: /usr/bin/python3, venv: /opt/v}}\n", "1: kernels.ml: give exactly one of argv, "
                                                                  "python or venv (got python, venv)"),
    ("kernels: {'a b': {python: /usr/bin/python3}}\n", "1: kernels.a b: not a valid kernel name"),
    ("kernels: {r: {argv: [R, '{connection_file}']}}\n", "1: kernels.r.argv: must start with an absolute path"),
    ("kernels: {r: {argv: [/usr/bin/R]}}\n", "1: kernels.r.argv: must pass {connection_file}"),
    ("kernels: {ml: {python: python3}}\n", "1: kernels.ml.python: 'python3' must be an absolute path"),
    ("server: {args: [--ServerApp.ip=0.0.0.0]}\n", "1: server.args[0]: '--ServerApp.ip=0.0.0.0' is set by notebookd"),
    ("server: {args: [--port, '9']}\n", "1: server.args[0]: '--port' is set by notebookd"),
    ("users:\n  al: {args: [--IdentityProvider.token=]}\n", "2: users.al.args[0]: '--IdentityProvider.token=' is set"),
])
def test_access_errors_are_one_line_with_the_key(text, expected):
    message = error(text)
    assert message.startswith(f"{FILE}:{expected}"), message
    assert "\n" not in message


def test_non_loopback_is_accepted_with_tls_or_allow_insecure():
    assert load("listen: {ip: 0.0.0.0}\ntls: {mode: self-signed}\n").listen.ip == "0.0.0.0"
    assert load("listen: {ip: 10.0.0.1, allow_insecure: true}\n").listen.ip == "10.0.0.1"
    assert load("listen: {ip: 127.0.0.2}\n").listen.ip == "127.0.0.2"  # all of 127/8 is loopback


# ---- what jupyter gets ----

def _spec(auth: str = "token", tls_mode: str = "off", jupyter_config: str = "{}") -> ServerSpec:
    return ServerSpec(
        account=Account("alice", 1001, 1001, (), "/home/alice", "/bin/bash"), ip="127.0.0.1", port=8801,
        base_url="/user/alice/", root_dir="/home/alice",
        settings=dataclasses.replace(ServerSettings(), auth=auth, jupyter_config=jupyter_config),
        restart=Restart(), health=Health(), logs=Logs(dir="/tmp"), tls=TLS(mode=tls_mode),
    )


@pytest.mark.parametrize("major, provider, hash_key", [(2, "PasswordIdentityProvider", "hashed_password"),
                                                       (1, "ServerApp", "password")])
def test_auth_keys_per_version(major, provider, hash_key):
    admin = json.dumps({provider: {hash_key: "sha1:planted", "token": "planted"}})
    token_only = jupyter.server_config(_spec("token", jupyter_config=admin), jupyter.ServerKind(major), ServerAccess(token_file="/t"))
    assert token_only[provider][hash_key] == ""  # no password, whatever the admin's extras said
    password = jupyter.server_config(_spec("password", jupyter_config=admin), jupyter.ServerKind(major),
                                     ServerAccess(password_file="/p"))
    assert hash_key not in password[provider], "the hash comes from the loader, never the JSON"
    assert password[provider]["token"] == ""
    both = jupyter.server_config(_spec("both"), jupyter.ServerKind(major), ServerAccess(token_file="/t", password_file="/p"))
    assert hash_key not in both.get(provider, {}) and "token" not in both.get(provider, {})
    app = both["ServerApp"]
    assert app["allow_remote_access"] is True and app["trust_xheaders"] is True
    assert "certfile" not in app


def test_tls_files_go_to_serverapp():
    app = jupyter.server_config(_spec(tls_mode="self-signed"), jupyter.ServerKind(2),
                                ServerAccess(token_file="/t", certfile="/s/tls.crt", keyfile="/s/tls.key"))["ServerApp"]
    assert (app["certfile"], app["keyfile"]) == ("/s/tls.crt", "/s/tls.key")
    assert _spec(tls_mode="self-signed").url() == "https://127.0.0.1:8801/user/alice/"


def test_password_loader_reads_the_file_and_refuses_to_run_without(tmp_path):
    pytest.importorskip("jupyter_server", reason="the fast tier's venv has no jupyter_server (the full one has)")
    good = tmp_path / "password"
    good.write_text("argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaA\n")
    for kind, target in ((jupyter.ServerKind(2), "PasswordIdentityProvider"), (jupyter.ServerKind(1), "ServerApp"),
                         (jupyter.ServerKind(6, "/tree", jupyter.NOTEBOOK_APP), "NotebookApp")):
        from traitlets.config import Config

        c = Config()
        exec(jupyter.password_loader(kind, str(good)), {"c": c})
        key = "hashed_password" if kind.identity_provider else "password"
        assert str(c[target][key]).startswith("argon2:$argon2id$")
        with pytest.raises(SystemExit, match="cannot read the password hash"):
            exec(jupyter.password_loader(kind, str(tmp_path / "missing")), {"c": Config()})


def test_environment_token_file_only_with_token_auth():
    files = {"token": "/s/token", "config": "/s/jupyter_server_config.json", "runtime": "/s/runtime",
             "share": "/run/notebookd/share"}
    env = jupyter.environment(_spec("password"), files, "m", ServerAccess(password_file="/s/password"))
    assert "JUPYTER_TOKEN_FILE" not in env and env["JUPYTER_PATH"] == "/run/notebookd/share"
    env = jupyter.environment(_spec("both"), files, "m", ServerAccess(token_file="/s/token", password_file="/p"))
    assert env["JUPYTER_TOKEN_FILE"] == "/s/token"
    assert not any("argon2" in v for v in env.values())


# ---- nginx ----

SERVERS = {"config": FILE, "proxy": {"listen": "443", "server_name": "lab.example.org", "cert": "/c.pem",
                                     "key": "/k.pem"},
           "servers": [{"name": "alice", "ip": "127.0.0.1", "port": 8801, "base_url": "/user/alice/", "tls": False},
                       {"name": "bob", "ip": "0.0.0.0", "port": 8802, "base_url": "/lab/bob/", "tls": True}]}


def test_nginx_render():
    text = nginx.render(SERVERS)
    assert "listen 443 ssl;" in text and "ssl_certificate /c.pem;" in text and "ssl_certificate_key /k.pem;" in text
    assert "location /user/alice/ {\n        proxy_pass http://127.0.0.1:8801;" in text
    assert "location /lab/bob/ {\n        proxy_pass https://127.0.0.1:8802;\n        proxy_ssl_verify off;" in text
    assert text.count("proxy_set_header Connection $notebookd_connection_upgrade;") == 2
    assert text.count("{") == text.count("}")
    plain = nginx.render({**SERVERS, "proxy": {"listen": "127.0.0.1:8080", "server_name": "_", "cert": "",
                                                "key": ""}})
    assert "listen 127.0.0.1:8080;" in plain and "ssl" not in plain.replace("proxy_ssl_verify", "")


# ---- certificates ----

def test_self_signed_is_renewed_before_it_expires_and_when_names_change(tmp_path, monkeypatch):
    monkeypatch.setattr(tls, "host_names", lambda t, ip: ["host.example.org", "localhost", *t.names])
    certs = tls.Certificates(str(tmp_path))
    settings = TLS(mode="self-signed", valid_for=90 * 86400.0, renew_before=30 * 86400.0)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert certs.ensure(settings, "127.0.0.1", now=now) is True
    cert, key = certs.self_signed()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700
    assert certs.ensure(settings, "127.0.0.1", now=now + datetime.timedelta(days=59)) is False
    assert certs.ensure(settings, "127.0.0.1", now=now + datetime.timedelta(days=61)) is True  # < 30 days left
    later = now + datetime.timedelta(days=61)
    assert certs.ensure(dataclasses.replace(settings, names=("new.example.org",)), "127.0.0.1", now=later) is True
    from cryptography import x509

    with open(cert, "rb") as fh:
        assert "new.example.org" in tls.san_names(x509.load_pem_x509_certificate(fh.read()))


def test_each_user_gets_a_key_of_their_own(tmp_path):
    certs = tls.Certificates(str(tmp_path))
    settings = TLS(mode="self-signed")
    alice, bob = certs.pair(settings, "127.0.0.1", "alice"), certs.pair(settings, "127.0.0.1", "bob")
    keys = {open(p[1], "rb").read() for p in (alice, bob, certs.self_signed())}
    assert len(keys) == 3 and alice[0].endswith("user-alice.crt")


def test_files_mode_needs_the_files(tmp_path):
    with pytest.raises(tls.TLSError, match="does not exist"):
        tls.Certificates(str(tmp_path)).pair(TLS(mode="files", cert="/nonexistent.pem", key="/k"), "127.0.0.1", "a")


# ---- passwords ----

def test_password_hash_is_jupyters_argon2id_and_checks_with_jupyter():
    pytest.importorskip("jupyter_server", reason="the fast tier's venv has no jupyter_server (the full one has)")
    from jupyter_server.auth.security import passwd_check

    hashed = passwords.hash_password("correct horse")
    assert hashed.startswith("argon2:$argon2id$") and passwords.is_hash(hashed)
    assert passwd_check(hashed, "correct horse") and not passwd_check(hashed, "wrong horse")
    with pytest.raises(ValueError, match="at least 8"):
        passwords.hash_password("short")


@pytest.mark.parametrize("text", ["plaintext", "sha1:abc:def", "argon2:$argon2i$v=19$m=1,t=1,p=1$a$b",
                                  "argon2:$argon2id$v=19$m=10240,t=10,p=8$c2FsdA$aGFzaA\nextra"])
def test_only_argon2id_hashes_are_stored(tmp_path, text):
    with pytest.raises(ValueError):
        passwords.PasswordStore(str(tmp_path)).set("alice", text)


# ---- shared kernels ----

def test_kernelspecs_are_written_and_stale_ones_removed(tmp_path):
    run = str(tmp_path)
    ml = Kernel("ml", "ML", ("/opt/ml/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"))
    kernelspecs.install(run, (ml, Kernel("old", "Old", ("/bin/false", "{connection_file}"))))
    kernelspecs.install(run, (ml,))
    root = tmp_path / "share" / "kernels"
    assert sorted(os.listdir(root)) == ["ml"]
    spec = json.loads((root / "ml" / "kernel.json").read_text())
    assert spec["argv"][0] == "/opt/ml/bin/python" and spec["display_name"] == "ML" and spec["language"] == "python"
    assert stat.S_IMODE(os.stat(root / "ml" / "kernel.json").st_mode) == 0o644


def _debian_major() -> str:
    import subprocess

    out = subprocess.run(["/usr/bin/python3", "-c", "import jupyter_server; print(jupyter_server.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()[:2]


@pytest.mark.root  # apt: Debian's jupyter_server beside the test venv's 2.x
@pytest.mark.skipif(_debian_major() != "1.", reason="needs Debian's python3-jupyter-server 1.x")
def test_major_version_asks_the_interpreter_not_its_binary():
    """A venv's python is a symlink to /usr/bin/python3.11: same binary, other packages (auth keys
    for 2.x given to 1.23 are ignored, and a password would be silently lost). The daemon's own
    interpreter is read in-process; another is probed (here as the test's own user: identity=False)."""
    import asyncio
    import sys

    from notebookd import preflight

    debian = dataclasses.replace(_spec(), settings=dataclasses.replace(
        ServerSettings(), command=("/usr/bin/python3", "-m", "jupyter_server")))
    env = {"PATH": "/usr/bin:/bin", "HOME": "/"}
    found = asyncio.run(preflight.check(debian, env, identity=False, root_dir=False))
    assert (found.argv0, found.kind.major) == ("/usr/bin/python3", 1)
    assert jupyter.own_kind([sys.executable, "-I", "-m", "jupyter_server"]).major == 2
    assert jupyter.own_kind(["/usr/bin/python3"]) is None


def test_check_config_names_missing_access_files(tmp_path):
    from notebookd import checks

    c = load(f"""\
        tls: {{mode: files, cert: {tmp_path}/missing.crt, key: {tmp_path}/missing.key}}
        kernels: {{ml: {{venv: {tmp_path}/no-venv}}, sys: {{python: /usr/bin/python3}}}}
        """)
    assert checks.access_problems(c) == [
        f"{FILE}: tls.cert: cannot read {tmp_path}/missing.crt",
        f"{FILE}: tls.key: cannot read {tmp_path}/missing.key",
        f"{FILE}: kernels.ml: {tmp_path}/no-venv/bin/python is not an executable file",
    ]
