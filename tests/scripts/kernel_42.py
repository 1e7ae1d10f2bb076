"""Run `6*7` in a new kernel of a Jupyter server over its channels WebSocket; print the result.

    python3 kernel_42.py BASE_URL TOKEN      (BASE_URL like http://127.0.0.1:8801/user/alice/)

Only the standard library and tornado (which every jupyter_server has), so it runs with any Python
that has a jupyter_server: the test venv's, or Debian's /usr/bin/python3 inside a container.
"""

import asyncio
import json
import sys
import urllib.request
import uuid

from tornado.websocket import websocket_connect


def rest(url: str, token: str, method: str = "GET", body: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=body, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


async def execute(conn, code: str, timeout: float = 90) -> str:
    """Send an execute_request on an open channels WebSocket; the text of its execute_result."""
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    while True:
        raw = await asyncio.wait_for(conn.read_message(), timeout)
        if raw is None:
            raise RuntimeError("the channels WebSocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            return msg["content"]["data"]["text/plain"]
        if msg["msg_type"] == "error":
            raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")


async def run(base: str, token: str, code: str) -> str:
    kernel = rest(base + "api/kernels", token, "POST", b"{}")["id"]
    try:
        ws_url = base.replace("http", "ws", 1) + f"api/kernels/{kernel}/channels?token={token}"
        conn = await websocket_connect(ws_url)
        try:
            return await execute(conn, code)
        finally:
            conn.close()
    finally:
        rest(base + f"api/kernels/{kernel}", token, "DELETE")


if __name__ == "__main__":
    print(asyncio.run(run(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "6*7")))
