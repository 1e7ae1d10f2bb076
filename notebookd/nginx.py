"""`notebookd render nginx`: an nginx config that puts every user's server behind one address.

The output goes into nginx's `http {}` context (Debian: /etc/nginx/conf.d/notebookd.conf): one
`location` per user at their base_url, proxied to their server with the WebSocket upgrade (kernels,
terminals), the original Host (jupyter compares it with the Origin of API and WebSocket requests),
X-Forwarded-* (the server trusts them: `trust_xheaders`), no buffering and day-long timeouts (a
kernel channel stays open while a notebook is open). Optional TLS at nginx (`proxy.cert`/`key`).

With `front_door.enabled`, every user location first asks notebookd (`auth_request`, on the
daemon's unix socket; see frontdoor/door.py) and sends the token it answers with as the request's
`Authorization`, whatever the client sent; `/` and `/_notebookd/` are notebookd's login pages.
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


# What nginx tells the front door: only these headers reach it (proxy_pass_request_headers off),
# so a client cannot send an X-Notebookd-* header of its own there.
DOOR_HEADERS = """\
proxy_http_version 1.1;
proxy_pass_request_headers off;
proxy_set_header Connection "";
proxy_set_header Host $http_host;
proxy_set_header Cookie $http_cookie;
proxy_set_header Origin $http_origin;
proxy_set_header Referer $http_referer;
proxy_set_header Accept $http_accept;
proxy_set_header Content-Type $content_type;
proxy_set_header X-Notebookd-Proto $scheme;
proxy_set_header X-Notebookd-Addr $remote_addr;
proxy_set_header X-Notebookd-Uri $request_uri;
proxy_set_header X-Notebookd-Upgrade $http_upgrade;
"""


def _door(socket: str) -> list[str]:
    """The front door's own locations: the login pages, and the internal auth_request target."""
    return [
        "    # the front door: notebookd's login page (PAM) and the per-request check behind auth_request",
        "    location = / {",
        "        proxy_pass http://notebookd_front_door;",
        *(f"        {line}" for line in DOOR_HEADERS.splitlines()),
        "    }",
        "    location /_notebookd/ {",
        "        proxy_pass http://notebookd_front_door;",
        "        client_max_body_size 16k;",
        *(f"        {line}" for line in DOOR_HEADERS.splitlines()),
        "    }",
        "    location /_notebookd/auth/ {",
        "        internal;",
        "        proxy_pass http://notebookd_front_door;",
        "        proxy_pass_request_body off;",
        "        proxy_set_header Content-Length \"\";",
        *(f"        {line}" for line in DOOR_HEADERS.splitlines()),
        "        proxy_set_header X-Notebookd-Method $request_method;",
        "        proxy_set_header Authorization $http_authorization;",
        "    }",
    ]


def render(data: dict) -> str:
    """nginx config text from the daemon's `proxy` answer (its config, servers and ports)."""
    proxy, servers = data["proxy"], data["servers"]
    door = data.get("front_door") or {}
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
    ]
    if door.get("enabled"):
        lines += [
            "upstream notebookd_front_door {",
            f"    server unix:{door['socket']};",
            "    keepalive 16;  # auth_request on every proxied request: no new connection for each",
            "}",
            "",
        ]
    lines += [
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
    ]
    if door.get("enabled"):
        lines += _door(door["socket"])
    else:
        lines += ["    location = / {", "        return 404;", "    }"]
    for server in servers:
        scheme = "https" if server["tls"] else "http"
        lines += [
            f"    # {server['name']}",
            f"    location {server['base_url']} {{",
        ]
        if door.get("enabled"):
            lines += [
                f"        auth_request /_notebookd/auth/{server['name']};",
                "        auth_request_set $notebookd_token $upstream_http_x_notebookd_token;",
                "        error_page 401 = /_notebookd/denied;  # browsers: the login page; APIs: 401",
            ]
        lines += [
            f"        proxy_pass {scheme}://{_upstream_host(server['ip'])}:{server['port']};",
        ]
        if server["tls"]:  # the server's own certificate is for browsers that reach it directly
            lines.append("        proxy_ssl_verify off;  # loopback")
        lines += [f"        {line}" for line in COMMON_HEADERS.splitlines()]
        if door.get("enabled"):
            lines += [
                "        # the token notebookd answered with, never what the client sent",
                "        proxy_set_header Authorization \"token $notebookd_token\";",
                "        proxy_set_header X-Notebookd-Token \"\";",
            ]
        lines += ["    }"]
        if door.get("enabled"):  # JupyterLab's File > Log Out ends the front door's session
            lines += [f"    location = {server['base_url']}logout {{",
                      "        return 302 /_notebookd/logout;", "    }"]
    lines.append("}")
    return "\n".join(lines) + "\n"
