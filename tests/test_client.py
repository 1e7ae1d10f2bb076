"""The CLI's end of the control socket (client.py): light to import, the same JSON as the json module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from notebookd import client


def test_a_status_call_imports_neither_json_re_nor_socket():
    """Each of them costs milliseconds of every `notebookd status` (python -X importtime)."""
    # what the interpreter's start imported already (an editable install's .pth imports re) is not counted
    code = ("import sys; before = set(sys.modules); from notebookd import cli; rows = [{'name': 'a', 'state': 'running', 'pid': 1, 'port': 2,"
            " 'url': 'u', 'started': 1.0, 'restarts': 0, 'memory': 2**20, 'last_error': None, 'last_exit': None}];"
            " cli.format_status({}, rows);"
            " print(sorted({'json', 're', 'socket', 'enum', 'argparse', 'asyncio'} & (set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


DOCUMENT = {"ok": True, "data": {"servers": [
    {"name": "ä\"b\\c\n", "pid": None, "memory": 123456789012, "ratio": 1.5e-7, "up": False, "tags": [1, [2, {}]]}],
    "warnings": ["\u202e", "\x00"]}}


def test_the_same_json_as_the_json_module():
    assert client.dumps(DOCUMENT) == json.dumps(DOCUMENT)
    assert client.loads(json.dumps(DOCUMENT) + "\n") == DOCUMENT
    assert client.loads(json.dumps(DOCUMENT, indent=2)) == DOCUMENT


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "nope", '{"a": 1}{"b": 2}'])
def test_what_is_not_one_json_value_is_a_value_error(text):
    with pytest.raises(ValueError):
        client.loads(text)


def test_an_unserializable_value_is_a_type_error():
    with pytest.raises(TypeError):
        client.dumps({"a": object()})
