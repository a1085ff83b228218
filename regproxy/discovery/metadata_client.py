"""regproxy asking a Dubbo 3 instance for the ``MetadataInfo`` of a revision: one
``MetadataService.getMetadataInfo(revision)`` call over the Dubbo protocol, on a connection of its own.

The bytes are regproxy.dubbo.metadata_service's (``encode_metadata_request``,
``decode_metadata_response``); this module only carries them.  Facts followed (apache/dubbo 3.3):

* Where: the instance's MetadataService address (``AppInstance.metadata_service_address``, after
  ``StandardMetadataServiceURLBuilder``).  A url-params protocol other than ``dubbo`` (``tri``: an
  instance whose url-params describe ``MetadataServiceV2``, ``meta-v=2.0.0``) is not spoken here and
  is an error naming it.
* One call per connection, then the connection is closed: what ``MetadataUtils.getRemoteMetadata``
  does (``referMetadataService``, one call, ``destroyProxy``).
* A Java provider heartbeats a connection it has read nothing from for a while
  (``HeartbeatTimerTask``) and closes one that answers none (``CloseTimerTask``); a two-way heartbeat
  is answered with a heartbeat response of the same id (``HeartbeatHandler.received``).  Other
  events (the read-only event a provider sends when it shuts down) and frames that answer another
  id are skipped: only the answer to our request ends the call.
* Failure is data, not a crash: every way the call can fail raises ``MetadataServiceError`` naming
  the instance (application and dialled address), the revision and the cause; the caller treats it
  as Dubbo does ``MetadataInfo.EMPTY`` (no addresses from that revision, try again later).

TLS: a regproxy ingress may serve mutual TLS only (regproxy.tls).  :func:`metadata_ssl` says which
context to dial an instance with, from the egress's ``UpstreamTLS`` (the same context and the same
rule as the data path), so nothing about TLS is set up twice.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as _ssl
from typing import Any, Final

from regproxy.dubbo.encode import heartbeat_reply
from regproxy.dubbo.frame import DEFAULT_MAX_BODY, FrameParser, ProtocolError
from regproxy.dubbo.metadata_service import (
    MetadataServiceError,
    decode_metadata_response,
    encode_metadata_request,
)
from regproxy.registry.instances import METADATA_SERVICE_V2, AppInstance
from regproxy.registry.metadata_info import MetadataInfo
from regproxy.tls import TLS_PARAM, UpstreamTLS

__all__ = ["MetadataServiceError", "fetch_metadata", "metadata_address", "metadata_ssl"]

_READ_SIZE: Final = 65536
# Request ids of this process's metadata calls.  Each call has a connection of its own, so the id
# only has to be one the answer can be matched to; a counter keeps them readable in captures.
_ids = itertools.count(1)
_MAX_ID: Final = (1 << 63) - 1


def _next_id() -> int:
    return next(_ids) % _MAX_ID or 1


def metadata_address(instance: AppInstance) -> str:
    """``HOST:PORT`` of the instance's MetadataService, as the routing table writes addresses
    (``[v6]:port`` for an IPv6 host): what :class:`UpstreamTLS` and the messages name."""
    _protocol, port = instance.metadata_service_address()
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    return f"{host}:{port}"


def metadata_ssl(instance: AppInstance, upstream: UpstreamTLS | None) -> _ssl.SSLContext | None:
    """The TLS context to dial ``instance``'s MetadataService with, None for plaintext.

    ``upstream`` is the sidecar's egress policy (``SidecarTLS.upstream``; None when ``tls`` is off):
    TLS when it dials the address with TLS (``tls.egress: always``, or in ``auto`` the egress table
    has that address with ``regproxy.tls=true``), or when the instance itself carries
    ``regproxy.tls=true`` in its metadata: an instance regproxy registers is its ingress, and a TLS
    ingress refuses plaintext.  The context is the egress's own (rotated on reload with it).
    """
    if upstream is None:
        return None
    if upstream.wants(metadata_address(instance)) or instance.metadata.get(TLS_PARAM) == "true":
        return upstream.context
    return None


def _os_reason(exc: BaseException, tls: bool) -> str:
    # An OSError made without arguments (uvloop's ConnectionResetError() for a peer that closed in
    # the TLS handshake) has None as its errno and strerror: say what it means, as the egress does.
    if tls and isinstance(exc, ConnectionResetError) and exc.errno is None:
        return (
            "the peer closed the connection in the TLS handshake without an alert (it refused this "
            "sidecar's certificate, or does not speak TLS on this port)"
        )
    text = getattr(exc, "strerror", None)
    if isinstance(text, str) and text:
        return text
    return str(exc) or type(exc).__name__


async def fetch_metadata(
    instance: AppInstance,
    revision: str,
    *,
    timeout_s: float,
    request_id: int | None = None,
    ssl: _ssl.SSLContext | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> MetadataInfo:
    """Ask ``instance`` for the MetadataInfo of ``revision`` (``getMetadataInfo``), within
    ``timeout_s`` for everything: connecting, the TLS handshake, the answer.

    ``ssl`` dials with TLS (see :func:`metadata_ssl`); ``max_body`` bounds the answer (a larger
    frame is refused from its header, before its body is read).  Raises MetadataServiceError naming
    the instance, the revision and the cause for every failure; CancelledError passes through.
    """
    address = metadata_address(instance)
    who = f"{instance.app} {address}"
    where = f"MetadataService.getMetadataInfo({revision!r}) on {who}"
    port = instance.metadata_service_address()[1]  # its protocol is checked by encode_metadata_request
    try:
        request = encode_metadata_request(
            _next_id() if request_id is None else request_id,
            instance.app,
            revision,
            url_params=instance.metadata_service_params,
            timeout_ms=max(1, int(timeout_s * 1000)),  # the provider is told the bound we keep
        )
    except ValueError as exc:
        v2 = " (meta-v 2.0.0: MetadataServiceV2 over triple)"
        hint = v2 if instance.metadata_service_version == METADATA_SERVICE_V2 else ""
        raise MetadataServiceError(f"{where}: {exc}{hint}") from None
    rid = int.from_bytes(request[4:12], "big", signed=True)
    writer: asyncio.StreamWriter | None = None
    step = "connecting" if ssl is None else "connecting (TLS handshake included)"
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: it can swallow a cancellation (3.11)
            tls: dict[str, Any] = {}
            if ssl is not None:
                # server_hostname is matched against the certificate only when the context checks
                # hostnames (tls.verify_ip), as the egress dials.
                tls = {"ssl": ssl, "server_hostname": instance.host, "ssl_handshake_timeout": timeout_s}
            reader, writer = await asyncio.open_connection(instance.host, port, limit=_READ_SIZE, **tls)
            step = "waiting for the answer"
            writer.write(request)
            parser = FrameParser(max_body)
            while True:
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    raise MetadataServiceError(f"{where}: {_closed_reason(parser, writer, ssl)}")
                for frame in parser.feed(chunk):
                    if frame.is_event:
                        if frame.is_request and frame.two_way:
                            # HeartbeatHandler: answered, or a Java provider closes the channel.
                            writer.write(heartbeat_reply(frame.request_id))
                        continue
                    if frame.is_request or frame.request_id != rid:
                        continue  # not the answer to our call
                    info = decode_metadata_response(frame, instance=who, revision=revision)
                    writer.close()
                    writer = None
                    return info
    except TimeoutError:
        raise MetadataServiceError(f"{where}: timed out after {timeout_s:g} s {step}") from None
    except ProtocolError as exc:
        raise MetadataServiceError(f"{where}: not a usable Dubbo answer: {exc}") from None
    except _ssl.SSLError as exc:
        raise MetadataServiceError(f"{where}: TLS handshake failed: {exc.reason or exc}") from None
    except OSError as exc:
        what = "cannot connect" if step.startswith("connecting") else "connection lost"
        raise MetadataServiceError(f"{where}: {what}: {_os_reason(exc, ssl is not None)}") from None
    finally:
        if writer is not None:
            writer.transport.abort()  # a failed call: nothing of ours is worth flushing


def _closed_reason(parser: FrameParser, writer: asyncio.StreamWriter, ssl: _ssl.SSLContext | None) -> str:
    if ssl is not None and UpstreamTLS.refused(writer.transport):
        return UpstreamTLS.refusal_reason
    if parser.buffered:
        return f"the peer closed the connection in the middle of a frame ({parser.buffered} bytes of it read)"
    if ssl is None:
        # What a TLS-only regproxy ingress does to a plaintext client (see metadata_ssl).
        return "the peer closed the connection without answering (is it a TLS-only ingress?)"
    return "the peer closed the connection without answering"
