"""The certificate and key the servers speak TLS with: the admin's files, or a self-signed pair.

Self-signed: an EC P-256 key and a certificate made here with `cryptography`, for this host's
name, its FQDN, localhost and the configured addresses, valid for `tls.valid_for` and made again
once less than `tls.renew_before` is left (or when the names it must carry changed). Every user's
server gets a pair of its own (`<state_dir>/tls/user-NAME.*`), so no user holds a key that another
user's server answers with; `selfsigned.*` is the host's pair, for nginx (`proxy.cert`/`key`). All
are root's (keys 0600); a server gets a copy of its key readable by its user only (`install`).

Files: the admin's certificate and key, the same for every server, so every server's user can read
that one key: prefer TLS at nginx (the key stays root's) when users must not hold it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket

from notebookd.config import TLS
from notebookd.fsutil import ensure_dir, write_atomic

HOST_PAIR = "selfsigned"


class TLSError(Exception):
    """The admin's certificate or key cannot be used."""


def host_names(tls: TLS, listen_ip: str) -> list[str]:
    """What a self-signed certificate must name: this host, localhost, the bind address, `tls.names`."""
    names = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    ip = ipaddress.ip_address(listen_ip)
    if ip.is_unspecified:
        names += _local_addresses()
    else:
        names.append(str(ip))
    names += list(tls.names)
    out: list[str] = []
    for name in names:
        if name and name not in out:
            out.append(name)
    return out


def _local_addresses() -> list[str]:
    try:
        import psutil
    except ImportError:
        return []
    out = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                text = addr.address.split("%", 1)[0]
                if not ipaddress.ip_address(text).is_link_local:
                    out.append(text)
    return out


class Certificates:
    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "tls")

    def self_signed(self, pair: str = HOST_PAIR) -> tuple[str, str]:
        return os.path.join(self.dir, f"{pair}.crt"), os.path.join(self.dir, f"{pair}.key")

    @staticmethod
    def user_pair(user: str) -> str:
        return f"user-{user}"

    def pair(self, tls: TLS, listen_ip: str, user: str) -> tuple[str, str]:
        """(cert, key) paths of `user`'s server, making or renewing self-signed pairs when due."""
        if tls.mode == "files":
            for path in (tls.cert, tls.key):
                if not os.path.isfile(path):
                    raise TLSError(f"tls: {path} does not exist")
            return tls.cert, tls.key
        self.ensure(tls, listen_ip)  # the host's, for nginx
        self.ensure(tls, listen_ip, self.user_pair(user))
        return self.self_signed(self.user_pair(user))

    def ensure(self, tls: TLS, listen_ip: str, pair: str = HOST_PAIR,
               now: datetime.datetime | None = None) -> bool:
        """Make a self-signed pair if it is missing, expiring or names other hosts. True if it was made."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        names = host_names(tls, listen_ip)
        cert_path, key_path = self.self_signed(pair)
        if os.path.exists(key_path) and not self._due(cert_path, names, tls, now):
            return False
        key_pem, cert_pem = make_self_signed(names, tls.valid_for, now)
        ensure_dir(self.dir, 0o700)
        write_atomic(key_path, key_pem, 0o600)
        write_atomic(cert_path, cert_pem, 0o644)
        return True

    def _due(self, cert_path: str, names: list[str], tls: TLS, now: datetime.datetime) -> bool:
        from cryptography import x509

        try:
            with open(cert_path, "rb") as fh:
                cert = x509.load_pem_x509_certificate(fh.read())
        except (OSError, ValueError):
            return True
        # not_valid_after_utc is cryptography >= 42; Debian 12 has 38, whose naive value is UTC
        expires = getattr(cert, "not_valid_after_utc", None) or \
            cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
        left = expires - now
        return left.total_seconds() < tls.renew_before or set(san_names(cert)) != set(names)


def san_names(cert) -> list[str]:
    from cryptography import x509

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def make_self_signed(names: list[str], valid_for: float, now: datetime.datetime) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): EC P-256, SHA-256, the names as SANs (DNS or IP)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "notebookd (self-signed)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(seconds=valid_for))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def install(cert: str, key: str, directory: str, uid: int, gid: int, root_uid: int) -> tuple[str, str]:
    """Copy the pair into a server's directory: the key 0400 owned by the server's user, so that user
    and root can read it and nobody else; the certificate 0444. Returns the copies' paths."""
    try:
        with open(cert, "rb") as fh:
            cert_pem = fh.read()
        with open(key, "rb") as fh:
            key_pem = fh.read()
    except OSError as exc:
        raise TLSError(f"tls: cannot read {exc.filename}: {exc.strerror}") from None
    cert_copy, key_copy = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    write_atomic(key_copy, key_pem, 0o400, uid, gid)
    write_atomic(cert_copy, cert_pem, 0o444, root_uid, gid)
    return cert_copy, key_copy
