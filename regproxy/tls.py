"""Mutual TLS between sidecars (egress → ingress): the SSL contexts and which upstreams get TLS.

* The ingress serves TLS only and requires a client certificate that chains to ``tls.ca_file``; a
  plaintext client or one without an acceptable certificate fails the handshake and is closed
  before the forwarder ever sees the connection.
* The egress presents its own certificate and verifies the ingress's chain against ``ca_file``.
  Sidecars are dialled by IP, and pod IPs change, so by default only the chain is checked: any
  certificate the CA signed is accepted. ``verify_ip: true`` also checks that the certificate
  carries the dialled IP as an IP SAN.
* Which upstreams get TLS: ``egress: always`` = every one; ``egress: auto`` = the hosts whose
  provider URL carries ``regproxy.tls=true`` (a sidecar with a TLS ingress publishes it; static
  cluster hosts say it in their ``metadata``), plaintext to the others. ``auto`` is what lets a
  fleet move to TLS one sidecar at a time (docs/operations.md, "TLS between sidecars").

The files are read when the sidecar starts and again on every reload (``SidecarTLS``), so a
rotated certificate, key or CA is taken without a restart by every new connection; connections
already open keep the session they have. ``problems()`` runs at config load, so a missing file, a
key that does not match its certificate or a CA file without certificates is a config error
naming its key (and a reload that would read such files is refused whole).
"""

from __future__ import annotations

import hashlib
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regproxy.config import TLSConfig
    from regproxy.routing import RoutingTable, TableHolder

__all__ = [
    "RESTART_FIELDS",
    "TLS_PARAM",
    "SidecarTLS",
    "UpstreamTLS",
    "client_context",
    "files_digest",
    "problems",
    "server_context",
]

# The provider URL parameter a sidecar with a TLS ingress publishes (Dubbo ignores unknown ones).
TLS_PARAM = "regproxy.tls"
_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def _no_password() -> bytes:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ValueError("the key is encrypted")


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def problems(cfg: TLSConfig) -> list[tuple[str, str]]:
    """Why the ``tls`` section cannot be used, as (key path, problem) pairs; [] when it can (or is off)."""
    if not cfg.enabled:
        return []
    errors: list[tuple[str, str]] = []
    texts: dict[str, str] = {}
    for key in ("cert_file", "key_file", "ca_file"):
        path = getattr(cfg, key)
        if not path:
            errors.append((f"tls.{key}", "required when tls.enabled is true"))
            continue
        try:
            texts[key] = _read(path)
        except OSError as exc:
            errors.append((f"tls.{key}", f"cannot read {path}: {exc.strerror or exc}"))
    if "cert_file" in texts and _PEM_CERT not in texts["cert_file"]:
        errors.append(("tls.cert_file", f"no PEM certificate in {cfg.cert_file}"))
    if "key_file" in texts and "PRIVATE KEY-----" not in texts["key_file"]:
        errors.append(("tls.key_file", f"no PEM private key in {cfg.key_file}"))
    elif "key_file" in texts and "ENCRYPTED" in texts["key_file"]:
        errors.append(
            (
                "tls.key_file",
                f"{cfg.key_file} is encrypted; give an unencrypted PEM key (file permissions protect it)",
            )
        )
    if "ca_file" in texts and _PEM_CERT not in texts["ca_file"]:
        errors.append(("tls.ca_file", f"no PEM certificate in {cfg.ca_file}"))
    if errors:
        return errors
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file, password=_no_password)  # type: ignore[arg-type]
    except (ssl.SSLError, ValueError) as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            errors.append(
                ("tls.key_file", f"does not match the certificate in tls.cert_file ({cfg.cert_file})")
            )
        else:
            errors.append(("tls.key_file", f"cannot load {cfg.key_file} with {cfg.cert_file}: {exc}"))
    try:
        ctx.load_verify_locations(cafile=cfg.ca_file)
    except ssl.SSLError as exc:
        errors.append(("tls.ca_file", f"cannot load CA certificates from {cfg.ca_file}: {exc}"))
    return errors


def _base(cfg: TLSConfig, protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cfg.cert_file, cfg.key_file, password=_no_password)  # type: ignore[arg-type]
    ctx.load_verify_locations(cafile=cfg.ca_file)
    return ctx


def server_context(cfg: TLSConfig) -> ssl.SSLContext:
    """The ingress's context: our certificate, and a client certificate signed by ca_file REQUIRED."""
    return _base(cfg, ssl.PROTOCOL_TLS_SERVER)


def client_context(cfg: TLSConfig) -> ssl.SSLContext:
    """The egress's (and its health checks') context: our certificate, the ingress's chain verified."""
    ctx = _base(cfg, ssl.PROTOCOL_TLS_CLIENT)
    # An IP address as server_hostname is matched against the certificate's IP SANs (not its CN).
    ctx.check_hostname = cfg.verify_ip
    return ctx


def files_digest(cfg: TLSConfig) -> str:
    """A digest of the certificate, key and CA files as they are now (a reload compares it with the
    one taken at start, to say a restart is needed after the files were replaced)."""
    h = hashlib.sha256()
    for path in (cfg.cert_file, cfg.key_file, cfg.ca_file):
        try:
            with open(path or "", "rb") as f:
                h.update(f.read())
        except OSError as exc:
            h.update(f"unreadable: {exc}".encode())
        h.update(b"\0")
    return h.hexdigest()


class UpstreamTLS:
    """Decides, per upstream address, whether to dial it with TLS; read on each new connection only
    (never per request). ``table`` is the egress table holder, read for the ``regproxy.tls`` host
    parameter in ``auto`` mode."""

    __slots__ = ("_index", "_table", "always", "context", "handshake_timeout_s", "table")

    # Why a peer closed a connection whose handshake it never completed (see ``refused``).
    refusal_reason = (
        "the peer refused this sidecar's TLS certificate: it closed the connection right after the "
        "handshake without completing it (the CA of tls.cert_file is not in its tls.ca_file, or the "
        "certificate expired or is not yet valid; an asyncio peer sends no TLS alert saying which)"
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        always: bool,
        table: TableHolder | None = None,
        handshake_timeout_s: float = 5.0,
    ) -> None:
        self.context = context
        self.always = always
        self.table = table
        self.handshake_timeout_s = handshake_timeout_s
        self._table: RoutingTable | None = None
        self._index: frozenset[str] = frozenset()

    def wants(self, address: str) -> bool:
        if self.always:
            return True
        if self.table is None:
            return False
        table = self.table.current
        if table is not self._table:
            # Tables are immutable and swapped whole: index each snapshot once.
            self._index = frozenset(
                h.address
                for cluster in table.clusters.values()
                for h in cluster.hosts
                if h.metadata.get(TLS_PARAM) == "true"
            )
            self._table = table
        return address in self._index

    @staticmethod
    def refused(transport: Any) -> bool:
        """Whether an upstream connection its peer closed without an error was a refusal of our
        certificate. In TLS 1.3 the client's handshake is done before the server has checked the
        client certificate, so a refusal arrives as a close after connect; and an asyncio server
        (uvloop's as well: CPython issue 98078) closes without sending the alert that would name
        the reason. A server that completed the handshake sends its session tickets first
        (OpenSSL's default, so every regproxy ingress): a TLS 1.3 session closed before any ticket
        arrived was never accepted. Read once, when the connection is lost."""
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None or sslobj.version() != "TLSv1.3":
            return False
        session = sslobj.session
        return session is not None and not session.has_ticket

    def connect_args(self, address: str, host: str) -> dict[str, Any]:
        """Extra ``loop.create_connection`` arguments for ``address`` ({} = plaintext)."""
        if not self.wants(address):
            return {}
        return {
            "ssl": self.context,
            # Only matched against the certificate when verify_ip is on (check_hostname).
            "server_hostname": host,
            "ssl_handshake_timeout": self.handshake_timeout_s,
        }


# Settings a reload cannot change: the ingress's listening socket is bound with or without TLS (and
# the published URLs say which), and its handshake timeout is fixed with it.
RESTART_FIELDS = ("enabled", "ingress", "handshake_timeout_s")


class SidecarTLS:
    """A sidecar's TLS state: the egress's ``upstream`` policy and the ingress's ``server_ssl``.

    The listening server keeps the context it was created with for good; that context's SNI
    callback, which OpenSSL runs on every ClientHello (with or without a server name), hands each
    new connection the current context: certificate, key and trusted CAs. So ``apply`` swaps all
    three for new connections without touching the listener.
    """

    def __init__(self, cfg: TLSConfig, table: TableHolder | None) -> None:
        self.cfg = cfg
        self.digest = files_digest(cfg)
        self.upstream = UpstreamTLS(
            client_context(cfg),
            always=cfg.egress == "always",
            table=table,
            handshake_timeout_s=cfg.handshake_timeout_s,
        )
        self.server_ssl: ssl.SSLContext | None = None
        self._server_current: ssl.SSLContext | None = None
        if cfg.ingress:
            self.server_ssl = self._server_current = server_context(cfg)
            self.server_ssl.sni_callback = self._pick_context

    def _pick_context(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self._server_current
        if current is not None and current is not ctx:
            sslobj.context = current

    def restart_needed(self, new: TLSConfig) -> list[str]:
        return [f"tls.{name}" for name in RESTART_FIELDS if getattr(new, name) != getattr(self.cfg, name)]

    def prepare(self, new: TLSConfig) -> tuple[ssl.SSLContext, ssl.SSLContext | None, str]:
        """Read ``new``'s files into fresh contexts (OSError/ssl.SSLError when they cannot be used);
        nothing changes until ``apply``."""
        server = server_context(new) if self.server_ssl is not None else None
        return client_context(new), server, files_digest(new)

    def apply(self, new: TLSConfig, prepared: tuple[ssl.SSLContext, ssl.SSLContext | None, str]) -> bool:
        """New connections use ``prepared`` from now on; True when the files or settings changed."""
        client, server, digest = prepared
        changed = digest != self.digest or new != self.cfg
        self.upstream.context = client
        self.upstream.always = new.egress == "always"
        if server is not None:
            self._server_current = server
        self.cfg, self.digest = new, digest
        return changed
