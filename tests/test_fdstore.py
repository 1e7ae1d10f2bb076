"""The fd store protocol (notify.py) and the socket book's use of it (listeners.py), without systemd:
a real datagram socket stands in for $NOTIFY_SOCKET and reads what systemd would read. Fast tier.
The real thing, in a booted systemd, is tests/test_systemd.py::TestNativeFdStore."""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys

import pytest

from notebookd import notify
from notebookd.listeners import SocketBook


@pytest.fixture
def systemd_side(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def receive(sock: socket.socket) -> tuple[str, list[socket.socket]]:
    data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data.decode(), [socket.socket(fileno=fd) for fd in fds]


def test_store_sends_the_socket_itself_and_unstore_names_it(systemd_side):
    keeper = notify.Notifier()
    listener = socket.create_server(("127.0.0.1", 0))
    keeper.store("alice", listener.fileno())
    text, fds = receive(systemd_side)
    assert text == "FDSTORE=1\nFDNAME=alice" and len(fds) == 1
    assert fds[0].getsockname() == listener.getsockname()  # the same listening socket, not a new one
    keeper.unstore("alice")
    assert receive(systemd_side) == ("FDSTOREREMOVE=1\nFDNAME=alice", [])
    for s in (*fds, listener):
        s.close()


class Recorder:
    def __init__(self):
        self.calls = []

    def store(self, name, fd):
        self.calls.append(("store", name, socket.socket(fileno=os.dup(fd)).getsockname()[1]))

    def unstore(self, name):
        self.calls.append(("unstore", name))


def test_the_book_stores_what_it_binds_and_unstores_only_what_it_lets_go_of_for_good():
    keeper = Recorder()
    book = SocketBook(keeper)
    sock = book.hold("alice", "127.0.0.1", 0)
    port = sock.getsockname()[1]
    assert keeper.calls == [("store", "alice", port)]
    book.hold("bob", "127.0.0.1", 0)
    book.release("bob")  # removed from the config
    assert keeper.calls[-1] == ("unstore", "bob")
    keeper.calls.clear()
    book.close()  # the daemon exits (a restart): the store keeps alice for the next one
    assert keeper.calls == []


def test_the_next_book_takes_the_inherited_socket_and_lets_go_of_moved_or_removed_users():
    first = socket.create_server(("127.0.0.1", 0))
    moved = socket.create_server(("127.0.0.1", 0))
    gone = socket.create_server(("127.0.0.1", 0))
    keeper = Recorder()
    book = SocketBook(keeper, {"alice": [first], "bob": [moved], "carol": [gone]})
    port = first.getsockname()[1]
    assert book.hold("alice", "127.0.0.1", port) is first and keeper.calls == []  # already in the store
    new = book.hold("bob", "127.0.0.1", 0)  # bob's port changed while no daemon ran
    assert keeper.calls == [("unstore", "bob"), ("store", "bob", new.getsockname()[1])]
    assert moved.fileno() == -1  # closed: the old port is free
    assert book.release_others({"alice", "bob"}) == ["carol"] and keeper.calls[-1] == ("unstore", "carol")
    assert gone.fileno() == -1
    book.close()


def test_listen_fds_takes_only_what_systemd_passed_to_this_very_process():
    listener = socket.create_server(("127.0.0.1", 0))
    code = ("import json, os; from notebookd import notify; found = notify.listen_fds(); "
            "print(json.dumps({n: [s.getsockname()[1] for s in v] for n, v in found.items()} | "
            "{'left': [v for v in ('LISTEN_PID', 'LISTEN_FDS') if v in os.environ], "
            "'cloexec': not os.get_inheritable(3)}))")
    run = lambda pid: subprocess.run(
        ["/bin/sh", "-c", f'LISTEN_PID={pid} LISTEN_FDS=1 LISTEN_FDNAMES=alice exec "$0" -c "$1"', sys.executable,
         code], pass_fds=(3,), capture_output=True, text=True, check=True,
        preexec_fn=lambda: (os.dup2(listener.fileno(), 3), os.set_inheritable(3, True)))
    mine = json.loads(run("$$").stdout)
    assert mine == {"alice": [listener.getsockname()[1]], "left": [], "cloexec": True}
    other = json.loads(run("1").stdout)  # meant for another process: not ours to take
    assert "alice" not in other and other["left"] == []
    listener.close()
