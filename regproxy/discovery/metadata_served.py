"""The MetadataService regproxy's ingress serves for the applications it publishes at application level.

A Dubbo 3 consumer that finds one of regproxy's instances under ``/services/<app>/`` asks the address
in its ``dubbo.metadata-service.url-params`` -- the ingress -- for ``getMetadataInfo(revision)``
(regproxy.dubbo.metadata_service has the facts and the bytes).  The ingress answers it itself:
:class:`MetadataServed` is installed as ``Forwarder.local_services[METADATA_SERVICE]`` (the data path
imports nothing from here), and the sidecar keeps it in step with what it publishes (``set``/``drop``).

One ingress may front several applications (``PublishSpec.application``); each has its own
MetadataService, told apart by group = the application name (``StandardMetadataServiceURLBuilder``
puts ``group`` = the instance's application on the consumer's URL), as several Dubbo applications
exporting on one port are by ``DubboProtocol``'s service keys.  A group none of them has is answered
as ``DubboProtocol.getInvoker`` answers a service key it has no exporter for, listing what it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from regproxy.dubbo.frame import HESSIAN2, Frame
from regproxy.dubbo.metadata_service import (
    METADATA_SERVICE,
    METADATA_SERVICE_VERSION,
    answer_metadata_request,
    not_exported,
)
from regproxy.dubbo.request import RequestBody
from regproxy.registry.metadata_info import MetadataInfo

__all__ = ["METADATA_SERVICE", "MetadataServed"]


class MetadataServed:
    """The MetadataInfo of each application this ingress serves, by revision; called with a request
    (whole frame, body read) it returns the response frame, or None for a one-way request.

    Raises Hessian2Error when the request's attachments or arguments are malformed (the forwarder
    answers BAD_REQUEST naming the cause)."""

    __slots__ = ("_apps",)

    def __init__(self) -> None:
        self._apps: dict[str, Mapping[str, MetadataInfo]] = {}

    @property
    def apps(self) -> frozenset[str]:
        return frozenset(self._apps)

    def infos(self, app: str) -> Mapping[str, MetadataInfo] | None:
        """What ``app`` is served with (read-only), None when it is not served."""
        return self._apps.get(app)

    def set(self, app: str, infos: Mapping[str, MetadataInfo]) -> None:
        """Serve ``app`` with ``infos`` (revision -> MetadataInfo), replacing what it had.  Copied:
        the caller may go on changing its own mapping.  An empty ``infos`` still serves the app,
        answering null to every revision, as a Dubbo provider without that revision does."""
        if not app:
            raise ValueError("application name must not be empty: it is the MetadataService's group")
        self._apps[app] = MappingProxyType(dict(infos))

    def drop(self, app: str) -> None:
        """Stop serving ``app``: its group is then answered as not exported."""
        self._apps.pop(app, None)

    def __call__(self, raw: bytes, body: RequestBody) -> bytes | None:
        frame = Frame.of(raw)
        if not frame.two_way:
            return None  # no answer is due, whatever it asked
        if frame.serialization != HESSIAN2:
            # Refused before the body is read, as answer_metadata_request does for any application.
            return answer_metadata_request(frame, body, "", {})
        group = body.group
        infos = self._apps.get(group)
        if infos is None or body.version != METADATA_SERVICE_VERSION:
            return not_exported(frame.request_id, body, self._apps)  # listing every one served here
        return answer_metadata_request(frame, body, group, infos)
