"""TLS on the servers themselves, and the rule that makes it mandatory off loopback.

One daemon binds 0.0.0.0 with a self-signed certificate notebookd made itself; nginx (rendered
by notebookd) adds its own TLS in front; the last test switches the daemon to the admin's files.
"""

from __future__ import annotations

import datetime
import os
import pwd
import signal
import socket
import ssl
import stat
import subprocess
import sys

import pytest

from conftest import Daemon, as_user, free_ports, http, needs_root, wait_for
from webclient import NGINX, https, run_code, start_nginx

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 0.0.0.0, ports: {low}-{high}}}
tls: {{mode: self-signed, names: [lab.example.org, 192.0.2.10]}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
proxy: {{listen: "127.0.0.1:{proxy_port}", cert: {{base}}/state/tls/selfsigned.crt,
        key: {{base}}/state/tls/selfsigned.key}}
users:
  {carol}: {{}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    carol, dave = users("axcarol"), users("axdave")  # dave has no server: the other user on the machine
    *auto, proxy_port = free_ports(6, 26000)
    daemon = Daemon(workdir, CONFIG.format(low=auto[0], high=auto[-1], proxy_port=proxy_port,
                                           carol=carol.pw_name)).start()
    daemon.carol, daemon.dave = carol.pw_name, dave.pw_name
    # carol's server answers with a pair of its own; the host's (selfsigned.*) is nginx's
    daemon.cafile = os.path.join(workdir, "state", "tls", f"user-{carol.pw_name}.crt")
    daemon.host_cafile = os.path.join(workdir, "state", "tls", "selfsigned.crt")
    daemon.proxy_port = proxy_port
    yield daemon
    daemon.stop()


def _cert(path: str):
    from cryptography import x509

    with open(path, "rb") as fh:
        return x509.load_pem_x509_certificate(fh.read())


def _handshake(port: int, cafile: str, server_hostname: str) -> dict:
    ctx = ssl.create_default_context(cafile=cafile)  # verifies the chain and the name
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return {"version": tls.version(), "cert": tls.getpeercert()}


def test_handshake_verifies_against_the_generated_certificate(lab):
    row = lab.rows()[lab.carol]
    assert row["local_url"].startswith("https://")
    for name in ("localhost", socket.gethostname(), "127.0.0.1", "lab.example.org"):
        assert _handshake(row["port"], lab.cafile, name)["version"] in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(row["port"], lab.cafile, "somewhere-else.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):  # and a client that trusts only public CAs says so
        _handshake(row["port"], None, "localhost")


def test_token_url_works_over_https_and_plain_http_gets_nothing(lab):
    url = lab.url(lab.carol)
    token = url.split("?token=")[1]
    base = lab.rows()[lab.carol]["local_url"]
    assert url.startswith(base) and base.startswith("https://")
    assert https(base + "api/kernels", token, lab.cafile)[0] == 200
    assert https(base + "api/kernels", None, lab.cafile)[0] == 403
    assert run_code(base, token, "6*7", cafile=lab.cafile) == "42"
    status, _, _ = http(base.replace("https", "http", 1) + "api/kernels", token)
    assert status in (0, 400), "nothing is served without TLS"


def test_self_signed_key_is_ec_p256_and_the_certificate_names_this_host(lab):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from notebookd.tls import san_names

    key_path = os.path.join(lab.base, "state", "tls", f"user-{lab.carol}.key")
    with open(key_path, "rb") as fh:
        key = load_pem_private_key(fh.read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1" and key.key_size == 256
    cert = _cert(lab.cafile)
    names = set(san_names(cert))
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn(), "lab.example.org",
            "192.0.2.10"} <= names
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=364) < left <= datetime.timedelta(days=365)


def test_each_key_is_readable_by_its_server_user_only(lab):
    for pair in (f"user-{lab.carol}", "selfsigned"):
        central = os.stat(os.path.join(lab.base, "state", "tls", f"{pair}.key"))
        assert central.st_uid == 0 and stat.S_IMODE(central.st_mode) == 0o600
    copy = os.path.join(lab.run_dir, "servers", lab.carol, "tls.key")
    st = os.stat(copy)
    assert st.st_uid == pwd.getpwnam(lab.carol).pw_uid and stat.S_IMODE(st.st_mode) == 0o400

    def can_read(user: str, path: str) -> bool:
        return subprocess.run(["cat", path], capture_output=True, **as_user(user)).returncode == 0

    assert can_read(lab.carol, copy)
    assert not can_read(lab.dave, copy)
    assert not can_read(lab.dave, os.path.join(lab.base, "state", "tls", f"user-{lab.carol}.key"))
    assert not can_read(lab.carol, os.path.join(lab.base, "state", "tls", "selfsigned.key")), "nginx's is root's"
    with open(copy, "rb") as fh, open(os.path.join(lab.base, "state", "tls", "selfsigned.key"), "rb") as host:
        assert fh.read() != host.read(), "carol's server does not hold the key nginx answers with"
    # the server process itself runs with that key
    pid = lab.rows()[lab.carol]["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == st.st_uid


def test_tls_at_nginx_in_front_of_tls_servers(lab):
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (apt; tests/run installs it)")
    rendered = lab.cli("render", "nginx")
    assert rendered.returncode == 0, rendered.stderr
    assert f"listen 127.0.0.1:{lab.proxy_port} ssl;" in rendered.stdout
    nginx = start_nginx(lab.base, rendered.stdout)
    try:
        base = f"https://localhost:{lab.proxy_port}/user/{lab.carol}/"
        wait_for(lambda: nginx.poll() is not None or _port_open(lab.proxy_port), 20, what="nginx")
        token = lab.token(lab.carol)
        assert https(base + "api/kernels", token, lab.host_cafile)[0] == 200
        assert run_code(base, token, "6*7", origin=f"https://localhost:{lab.proxy_port}",
                        cafile=lab.host_cafile) == "42"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(20)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_files_mode_serves_the_admins_certificate(lab):
    """Last in this module: it switches the daemon to tls: files by a reload."""
    from notebookd.tls import make_self_signed

    now = datetime.datetime.now(datetime.timezone.utc)
    key_pem, cert_pem = make_self_signed(["admin-ca.example.org", "localhost"], 86400 * 30, now)
    cert, key = os.path.join(lab.base, "admin.crt"), os.path.join(lab.base, "admin.key")
    with open(cert, "wb") as fh:
        fh.write(cert_pem)
    with open(key, "wb") as fh:
        fh.write(key_pem)
    os.chmod(key, 0o600)
    old = lab.rows()[lab.carol]
    with open(lab.config_path) as fh:
        text = fh.read()
    lab.write_config(text.replace("tls: {mode: self-signed, names: [lab.example.org, 192.0.2.10]}",
                                  f"tls: {{mode: files, cert: {cert}, key: {key}}}"))
    out = lab.cli("reload")
    assert out.returncode == 0, out.stderr
    lab.wait_replaced(lab.carol, old["pid"])
    assert _handshake(old["port"], cert, "admin-ca.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(old["port"], lab.cafile, "localhost")
    copy = os.stat(os.path.join(lab.run_dir, "servers", lab.carol, "tls.key"))
    assert stat.S_IMODE(copy.st_mode) == 0o400 and copy.st_uid == pwd.getpwnam(lab.carol).pw_uid


# ---- the remote-access rule ----

def test_a_non_loopback_bind_without_tls_is_refused(users, tmp_path):
    user = users("axcarol").pw_name
    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"listen:\n  ip: 0.0.0.0\nusers:\n  {user}: {{}}\n")
    for command in ("check-config", "run"):
        out = subprocess.run([sys.executable, "-m", "notebookd", "--config", str(cfg), command],
                             capture_output=True, text=True, timeout=60, cwd="/",
                             env={"PATH": "/usr/bin:/bin", "NOTEBOOKD_RUN_DIR": str(tmp_path / "run")})
        assert out.returncode == 1, out
        assert out.stderr.count("\n") == 1
        assert out.stderr.startswith(f"notebookd: {cfg}:2: listen.ip: 0.0.0.0 is reachable from other machines "
                                     "but tls.mode is off")
    assert not (tmp_path / "run" / "control.sock").exists()
    cfg.write_text(f"listen:\n  ip: 0.0.0.0\n  allow_insecure: true\nusers:\n  {user}: {{}}\n")
    ok = subprocess.run([sys.executable, "-m", "notebookd", "--config", str(cfg), "check-config"],
                        capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
