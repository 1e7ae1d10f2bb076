"""`notebookd render nginx`: an nginx config that puts every user's server behind one address.

The output goes into nginx's `http {}` context (Debian: /etc/nginx/conf.d/notebookd.conf): one
`location` per user at their base_url, proxied to their server with the WebSocket upgrade (kernels,
terminals), the original Host (jupyter compares it with the Origin of API and WebSocket requests),
X-Forwarded-* (the server trusts them: `trust_xheaders`), no buffering and day-long timeouts (a
kernel channel stays open while a notebook is open). Optional TLS at nginx (`proxy.cert`/`key`).
"""

from __future__ import annotations

import ipaddress

COMMON_HEADERS = """\
proxy_http_version 1.1;
proxy_set_header Host $http_host;
proxy_set_header X-Real-IP $remote_addr;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Host $http_host;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection $notebookd_connection_upgrade;
proxy_read_timeout 1d;
proxy_send_timeout 1d;
proxy_buffering off;
proxy_request_buffering off;
"""


def _upstream_host(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    if addr.is_unspecified:
        return "127.0.0.1" if addr.version == 4 else "[::1]"
    return f"[{addr}]" if addr.version == 6 else str(addr)


def render(data: dict) -> str:
    """nginx config text from the daemon's `proxy` answer (its config, servers and ports)."""
    proxy, servers = data["proxy"], data["servers"]
    tls = bool(proxy["cert"])
    lines = [
        f"# notebookd: rendered by `notebookd render nginx` from {data['config']}.",
        "# Render again (and `nginx -s reload`) after users are added or removed.",
        "# For nginx's http {} context, e.g. /etc/nginx/conf.d/notebookd.conf.",
        "",
        "map $http_upgrade $notebookd_connection_upgrade {",
        "    default upgrade;",
        "    ''      close;",
        "}",
        "",
        "server {",
        f"    listen {proxy['listen']}{' ssl' if tls else ''};",
        f"    server_name {proxy['server_name']};",
    ]
    if tls:
        lines += [
            f"    ssl_certificate {proxy['cert']};",
            f"    ssl_certificate_key {proxy['key']};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
            "    ssl_session_cache shared:notebookd:1m;",
            "    add_header Strict-Transport-Security \"max-age=31536000\" always;",
        ]
    lines += [
        "    client_max_body_size 0;  # notebook uploads (jupyter sends big files in chunks)",
        "",
        "    location = / {",
        "        return 404;",
        "    }",
    ]
    for server in servers:
        scheme = "https" if server["tls"] else "http"
        lines += [
            f"    # {server['name']}",
            f"    location {server['base_url']} {{",
            f"        proxy_pass {scheme}://{_upstream_host(server['ip'])}:{server['port']};",
        ]
        if server["tls"]:  # the server's own certificate is for browsers that reach it directly
            lines.append("        proxy_ssl_verify off;  # loopback")
        lines += [f"        {line}" for line in COMMON_HEADERS.splitlines()]
        lines += ["    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
