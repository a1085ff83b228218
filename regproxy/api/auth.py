"""Who may call the HTTP APIs: bearer tokens, loopback callers, and the warning for remote binds.

Shared by the pub/sub API (``regproxy.api.http``) and the admin API (``regproxy.api.admin``) so both
answer the same way: 401 when a token is configured and the request carries none (with a
``WWW-Authenticate`` challenge), 403 for a wrong token or a caller that may not change anything.
Messages name the config key, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from regproxy.address import is_loopback_host

__all__ = ["Refusal", "check_bearer", "is_loopback", "warn_if_remote"]

log = logging.getLogger(__name__)

UNAUTHORIZED = 8  # err_no of a 401 (both APIs)
FORBIDDEN = 9  # err_no of a 403


@dataclass(frozen=True)
class Refusal:
    status: int  # 401 or 403
    err_no: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)


def is_loopback(remote: str | None) -> bool:
    """Whether ``remote`` (aiohttp's ``request.remote``) is 127.0.0.0/8 or ::1 (IPv4-mapped too)."""
    if not remote:
        return False  # unknown peer: never trusted
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _digest(text: str) -> bytes:
    # Comparing digests keeps the comparison constant-time whatever the lengths and characters.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def check_bearer(authorization: str | None, token: str, *, key: str, api: str) -> Refusal | None:
    """None when ``authorization`` is ``Bearer <token>``; otherwise why not (401 or 403).

    ``key`` names the config key holding the token, ``api`` the API ("admin"), for the message.
    """
    challenge = {"WWW-Authenticate": f'Bearer realm="regproxy {api}"'}
    if not authorization:
        return Refusal(
            401,
            UNAUTHORIZED,
            f"this {api} API needs a token: send Authorization: Bearer TOKEN ({key})",
            challenge,
        )
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return Refusal(401, UNAUTHORIZED, "expected Authorization: Bearer TOKEN", challenge)
    if not hmac.compare_digest(_digest(given.strip()), _digest(token)):
        return Refusal(403, FORBIDDEN, f"wrong {key.replace('_', ' ')}")  # "wrong admin token"
    return None


def warn_if_remote(name: str, host: str, *, has_token: bool) -> None:
    """Log at startup that a listener serves other hosts (the config allowed it explicitly)."""
    if is_loopback_host(host):
        return
    log.warning(
        "%s listens on %s, reachable from other hosts (%s_allow_remote is set)%s",
        name,
        host,
        name,
        "" if has_token else "; no auth_token is set, so anyone who can reach it may use it",
    )
