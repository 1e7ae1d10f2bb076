"""Clients for the access tests: nginx started on loopback, the kernel protocol over a WebSocket, and
Debian's headless Chromium.

Real parts only: apt's nginx with the config notebookd renders, the messages JupyterLab sends, a browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import textwrap
import uuid

from conftest import http

NGINX = "/usr/sbin/nginx"


def start_nginx(base: str, site: str) -> subprocess.Popen:
    """nginx from apt with `site` in its http {} context; files, pid and logs under `base`."""
    conf = os.path.join(base, "nginx.conf")
    with open(os.path.join(base, "notebookd-nginx.conf"), "w") as fh:
        fh.write(site)
    temp = os.path.join(base, "nginx-temp")
    os.makedirs(temp, exist_ok=True)
    with open(conf, "w") as fh:
        fh.write(textwrap.dedent(f"""\
            worker_processes 1;
            error_log {base}/nginx-error.log info;
            events {{ worker_connections 256; }}
            http {{
                access_log {base}/nginx-access.log;
                client_body_temp_path {temp}/body;
                proxy_temp_path {temp}/proxy;
                fastcgi_temp_path {temp}/fastcgi;
                uwsgi_temp_path {temp}/uwsgi;
                scgi_temp_path {temp}/scgi;
                include {base}/notebookd-nginx.conf;
            }}
            """))
    check = subprocess.run([NGINX, "-t", "-c", conf, "-e", f"{base}/nginx-error.log",
                            "-g", f"daemon off; pid {base}/nginx.pid;"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    return subprocess.Popen([NGINX, "-c", conf, "-e", f"{base}/nginx-error.log",
                             "-g", f"daemon off; pid {base}/nginx.pid;"])


def https(url: str, token: str | None = None, cafile: str | None = None, method: str = "GET",
          body: bytes | None = None, server_hostname: str | None = None) -> tuple[int, bytes, dict]:
    """conftest.http, but over TLS verified against `cafile` (for http:// URLs: conftest.http)."""
    if not url.startswith("https:"):
        return http(url, token, method=method, body=body)
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=cafile)
    req = urllib.request.Request(url, method=method, data=body)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=20, context=ctx) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


async def execute(ws_url: str, token: str | None, code: str, origin: str | None, cookie: str | None = None,
                  cafile: str | None = None) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    from scripts import kernel_42  # tornado, like the imports above: the fast tier collects this module too

    headers = {}
    if token:
        headers["Authorization"] = f"token {token}"
    if origin:
        headers["Origin"] = origin
    if cookie:
        headers["Cookie"] = cookie
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers, request_timeout=30, ca_certs=cafile))
    try:
        return await kernel_42.execute(conn, code)
    except RuntimeError as exc:  # the kernel's error, or a closed channel: a failed test here
        raise AssertionError(str(exc)) from None
    finally:
        conn.close()


def run_code(base: str, token: str, code: str, kernel_name: str | None = None, origin: str | None = None,
             cafile: str | None = None) -> str:
    """Start a kernel over REST at `base`, run `code` over its channels WebSocket, return the result.
    https:// bases are verified against `cafile`."""
    body = json.dumps({"name": kernel_name} if kernel_name else {}).encode()
    status, answer, _ = https(base + "api/kernels", token, cafile, method="POST", body=body)
    assert status == 201, answer
    kernel = json.loads(answer)["id"]
    try:
        ws = base.replace("http", "ws", 1) + f"api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
        return asyncio.run(execute(ws, token, code, origin, cafile=cafile))
    finally:
        https(base + f"api/kernels/{kernel}", token, cafile, method="DELETE")


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def chromium(base: str, console: bool = False):
    """Debian's chromium driven by selenium through chromium-driver, with a fresh profile and the driver's
    log under `base`; `console`: keep what pages log (drv.get_log("browser"), e.g. CSP violations).
    Skips the test where either is not installed."""
    import pytest

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("needs chromium and chromium-driver (apt; tests/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={os.path.join(base, 'chromium-profile')}"):
        opts.add_argument(flag)
    # leaving a page that asks "leave site?" (an open notebook): accept, or the next page never loads
    opts.set_capability("unhandledPromptBehavior", "accept")
    if console:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver, log_output=os.path.join(base, "chromedriver.log")), options=opts)
    drv.set_page_load_timeout(120)
    return drv
