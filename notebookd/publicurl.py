"""The address users open: nginx's (`proxy:`), when the config names one.

`notebookd url`, `token` and `status` show a server there rather than at its loopback port, which
nobody outside this machine can open. The host is the first `proxy.server_name` that names one host
(`_`, wildcards and regular expressions do not), else the address in `proxy.listen` if it is one
(`[::1]:8443`: the literal address, never `localhost`); nothing (`listen: 443`, `server_name: _`)
means no public URL and the loopback one is shown. The scheme is https with TLS at nginx
(`proxy.cert`); the port is written only where it is not the scheme's own (80, 443).
"""

from __future__ import annotations

import ipaddress

DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin(listen: str, server_name: str, tls: bool) -> str | None:
    """`https://lab.example.org`, `http://[::1]:8443`, or None when nothing names the host."""
    address, _, port = listen.rpartition(":")
    host = next(filter(None, map(_named_host, server_name.split())), None) or _literal(address)
    if host is None:
        return None
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


def of(proxy) -> str | None:
    """The origin of a `config.Proxy`."""
    return origin(proxy.listen, proxy.server_name, bool(proxy.cert))


def _named_host(name: str) -> str | None:
    """One nginx server_name as a URL host; None for a name that matches many (or none)."""
    if name.startswith("."):  # `.example.org`: example.org and its subdomains
        name = name[1:]
    if not name or name == "_" or name.startswith("~") or "*" in name:
        return None
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name.lower()
    return _literal(name)


def _literal(text: str) -> str | None:
    """An IP address as a URL host (IPv6 in brackets); None for `*`, `0.0.0.0`, `[::]` or no address."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if addr.is_unspecified:
        return None
    return f"[{addr}]" if addr.version == 6 else str(addr)
