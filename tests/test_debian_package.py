"""The Debian package, for real: built with dpkg-buildpackage, installed with apt into a clean bookworm root
booted with systemd, upgraded without touching a user's server, and purged without a trace.

The root (tests/debroot.py) holds the .debs of the dependencies in its apt cache but not the packages
themselves: apt inside the container resolves and installs Debian's python3-jupyter-server 1.23 & co.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import needs_root, wait_for

pytestmark = [
    needs_root,
    pytest.mark.skipif(not all(shutil.which(t) for t in ("debootstrap", "systemd-nspawn", "dpkg-buildpackage")),
                       reason="needs debootstrap, systemd-container and dpkg-dev (tests/run installs them)"),
]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
USER = "labuser"


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    out = tmp_path_factory.mktemp("debs")
    os.chmod(out, 0o755)
    built = []
    for version in ("0.1.0~test1", "0.1.0~test2"):
        res = subprocess.run([os.path.join(REPO, "packaging", "build-deb"), version, str(out)],
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        built.append(os.path.basename(res.stdout.strip()))
    return str(out), built


@pytest.fixture(scope="module")
def box(debs, workdir):
    import debroot
    from sysroot import Container

    out, _ = debs
    c = Container(debroot.root(), binds_ro=[f"{out}:/debs", f"{HERE}/scripts:/tests"],
                  log=os.path.join(workdir, "container.log")).boot()
    yield c
    c.stop()


def apt(box, *args: str) -> subprocess.CompletedProcess:
    # from / inside the container: apt resolves a local .deb against the working directory
    res = box.run("sh", "-c", 'cd / && exec apt-get -y -q "$@"', "apt", *args, check=False, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def status(box) -> tuple[int, dict]:
    res = box.run("notebookd", "status", "--json", check=False)
    return res.returncode, (json.loads(res.stdout) if res.stdout else {})


def server_row(box) -> dict:
    return next(r for r in status(box)[1]["servers"] if r["name"] == USER)


def test_lintian_is_clean(debs):
    out, names = debs
    if not shutil.which("lintian"):
        pytest.skip("lintian not installed")
    res = subprocess.run(["lintian", "--fail-on", "error,warning", os.path.join(out, names[0])],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_install_gives_a_running_service_and_a_usable_notebook(box, debs):
    _, (v1, _) = debs
    apt(box, "install", f"/debs/{v1}")
    # apt pulled in Debian's own jupyter_server 1.23 and the classic notebook UI (Recommends)
    versions = box.run("dpkg-query", "-W", "python3-jupyter-server", "python3-nbclassic", "python3-ipykernel").stdout
    assert "python3-jupyter-server\t1.23" in versions and "python3-nbclassic" in versions
    wait_for(lambda: box.run("systemctl", "is-active", "notebookd", check=False).stdout.strip() == "active", 60,
             what="notebookd.service active")
    assert box.run("systemctl", "is-enabled", "notebookd").stdout.strip() == "enabled"
    # state, run and log dirs with the right owners and modes
    for path, mode in (("/var/lib/notebookd", 0o755), ("/var/log/notebookd", 0o755), ("/run/notebookd", 0o755)):
        st = os.stat(box.path(path))
        assert (st.st_uid, st.st_mode & 0o777) == (0, mode), path
    assert os.path.exists(box.path("/usr/share/man/man8/notebookd.8.gz"))
    # the templates of `backend: systemd`: the server and the socket unit that holds its port
    for unit in ("notebookd-user@.service", "notebookd-user@.socket"):
        assert os.path.exists(box.path(f"/lib/systemd/system/{unit}")), unit
    assert os.path.exists(box.path("/usr/share/bash-completion/completions/notebookd"))
    # the front door's PAM service, and its check with Debian's pamela 1.0 (Recommends)
    assert "@include common-auth" in open(box.path("/etc/pam.d/notebookd")).read()
    box.run("useradd", "pamcheck")
    box.run("chpasswd", input="pamcheck:front door pass\n")
    for password, ok in (("front door pass", True), ("wrong", False)):
        request = json.dumps({"service": "notebookd", "user": "pamcheck", "password": password})
        out = box.run("python3", "-I", "-m", "notebookd.frontdoor.pamhelper", input=request).stdout
        assert json.loads(out)["ok"] is ok, out

    # an admin adds a user to the packaged config and reloads
    box.run("useradd", "--create-home", USER)
    conf = box.path("/etc/notebookd/notebookd.yaml")
    with open(conf) as fh:
        text = fh.read()
    with open(conf, "w") as fh:
        fh.write(text.replace("users: {}", f"users:\n  {USER}: {{port: 8801}}"))
    box.run("systemctl", "reload", "notebookd")
    wait_for(lambda: status(box)[0] == 0, 90, what="the user's server running")
    assert box.run("notebookd", "status", check=False).returncode == 0

    url = box.run("notebookd", "url", USER).stdout.strip()
    assert "/tree?token=" in url, "the packaged default serves the classic notebook UI"
    base, token = url.split("tree?token=")
    page = box.run("python3", "-c", "import sys, urllib.request as u; "
                   "r = u.urlopen(u.Request(sys.argv[1], headers={'Authorization': 'token ' + sys.argv[2]})); "
                   "print(r.status); print(r.read().decode()[:4000])", base + "tree", token)
    assert page.stdout.startswith("200") and "notebook" in page.stdout.lower()
    result = box.run("python3", "/tests/kernel_42.py", base, token, timeout=120)
    assert result.stdout.strip() == "42"
    # the server runs as the user, not as root
    row = server_row(box)
    with open(box.path(f"/proc/{row['pid']}/status")) as fh:
        uid_line = next(line for line in fh if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {box.run("id", "-u", USER).stdout.strip()}
    box.first_pid = row["pid"]


def test_upgrade_keeps_the_users_server(box, debs):
    _, (_, v2) = debs
    before = server_row(box)["pid"]
    apt(box, "install", f"/debs/{v2}")
    assert "0.1.0~test2" in box.run("dpkg-query", "-W", "notebookd").stdout
    wait_for(lambda: status(box)[0] == 0, 60, what="notebookd answering again after the upgrade")
    row = server_row(box)
    assert row["pid"] == before, "the upgrade must not restart users' servers"
    daemon_pid = status(box)[1]["daemon"]["pid"]
    assert box.run("systemctl", "show", "-p", "MainPID", "--value", "notebookd").stdout.strip() == str(daemon_pid)
    assert "adopting" in box.run("journalctl", "-u", "notebookd", "--no-pager", check=False).stdout


def test_purge_leaves_nothing_behind(box):
    pid = server_row(box)["pid"]
    apt(box, "purge", "notebookd")
    time.sleep(0.5)
    assert not os.path.exists(box.path(f"/proc/{pid}/status")) or \
        "zombie" in open(box.path(f"/proc/{pid}/status")).read()
    uid = box.run("id", "-u", USER).stdout.strip()
    assert box.run("pgrep", "-u", uid, check=False).stdout.strip() == "", "no process of the user's server"
    for path in ("/etc/notebookd", "/var/lib/notebookd", "/var/log/notebookd", "/run/notebookd",
                 "/lib/systemd/system/notebookd.service", "/usr/bin/notebookd",
                 "/etc/systemd/system/multi-user.target.wants/notebookd.service"):
        assert not os.path.lexists(box.path(path)), f"{path} is still there after purge"
    assert box.run("systemctl", "is-active", "notebookd", check=False).stdout.strip() != "active"
