"""Sockets of the Nacos double: the gRPC SDK port (HTTP port + 1000) and a small HTTP port.

gRPC framing is the published one (nacos_grpc_service.proto): every message is a ``Payload`` whose
``metadata.type`` names the request or response class and whose ``body.value`` is that object's
JSON.  The Payload class is imported from nacos-sdk-python's generated module because it *is* the
protocol's message definition; nothing else of the client is used here.

Connection life cycle, as in Nacos 2.x:

1. the client's ``ServerCheckRequest`` (unary ``Request/request``) gets a connection id for its
   HTTP/2 transport (we key transports by ``context.peer()``);
2. it opens ``BiRequestStream/requestBiStream`` and sends ``ConnectionSetupRequest``: from then on
   the connection is registered and unary requests from that transport are served; before that
   (or on a transport the server never set up, e.g. after a restart) they get ErrorResponse 301
   "Connection is unregistered.";
3. the server pushes ``NotifySubscriberRequest`` (naming) and ``ConfigChangeNotifyRequest``
   (config) on the stream; the client acks with a response carrying the same requestId (Nacos's
   ``GrpcBiStreamRequestAcceptor`` takes any response as the ack of that id: the Python SDK acks
   config pushes with a ``NotifySubscriberResponse``, the Java one with ``ConfigChangeNotifyResponse``);
4. when the stream ends (client shutdown, channel closed, server stop) the connection is
   unregistered, its ephemeral instances and config listens removed and the remaining subscribers
   pushed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2 import Metadata, Payload

from tests.peers.nacos.configs import (
    CONFIG_NOT_FOUND,
    Config,
    ConfigKey,
    ConfigStore,
    check_names,
    check_write,
    tenant_of,
)
from tests.peers.nacos.model import (
    BAD_GATEWAY,
    DEFAULT_CLUSTER,
    DEFAULT_GROUP,
    METADATA_LIMIT,
    NO_HANDLER,
    NO_RIGHT,
    SERVER_ERROR,
    UN_REGISTER,
    Failed,
    Instance,
    InvalidRequest,
    Registry,
    ServiceKey,
    check_clusters,
    service_key,
)

log = logging.getLogger("tests.peers.nacos")

GRPC_PORT_OFFSET = 1000
TOKEN_TTL_S = 18_000
# The response type of each naming and config request (all guarded by auth when it is on).  A refusal
# by a filter (parameter check, auth) comes back in that type with resultCode 500, and so does a config
# handler's own refusal; a naming handler's own refusal comes back as ErrorResponse.  The SDK treats
# them differently: after an ErrorResponse it retries three times and then re-checks its connection.
_RESPONSE_TYPES = {
    "InstanceRequest": "InstanceResponse",
    "BatchInstanceRequest": "BatchInstanceResponse",
    "PersistentInstanceRequest": "InstanceResponse",
    "ServiceQueryRequest": "QueryServiceResponse",
    "SubscribeServiceRequest": "SubscribeServiceResponse",
    "ServiceListRequest": "ServiceListResponse",
    "ConfigQueryRequest": "ConfigQueryResponse",
    "ConfigPublishRequest": "ConfigPublishResponse",
    "ConfigRemoveRequest": "ConfigRemoveResponse",
    "ConfigBatchListenRequest": "ConfigChangeBatchListenResponse",
}
# Fields the Python SDK's response models require even in a refusal.
_REQUIRED_FIELDS: dict[str, dict[str, Any]] = {"ServiceListResponse": {"count": 0, "serviceNames": []}}

Reply = dict[str, Any]


@dataclass(eq=False)
class _Connection:
    """A registered SDK connection: the transport it lives on and the stream the server writes to."""

    id: str
    peer: str
    context: grpc.aio.ServicerContext
    client_version: str
    labels: dict[str, str]
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unacked: set[str] = field(default_factory=set)


def _peer_address(peer: str) -> tuple[str, str]:
    """'ipv4:127.0.0.1:5000' / 'ipv6:[::1]:5000' -> ('127.0.0.1', '5000')."""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def _payload(kind: str, body: Mapping[str, Any]) -> Payload:
    payload = Payload(metadata=Metadata(type=kind, clientIp=""))
    payload.body.value = json.dumps(body, separators=(",", ":")).encode()
    return payload


def _decode(payload: Payload) -> dict[str, Any]:
    raw = payload.body.value
    body = json.loads(raw) if raw else {}
    if not isinstance(body, dict):
        raise ValueError("body is not a JSON object")
    return body


def _ok(kind: str, request_id: str, **fields: Any) -> Payload:
    body = {"resultCode": 200, "errorCode": 0, "message": "", "requestId": request_id, "success": True}
    return _payload(kind, {**body, **fields})


def _error(code: int, message: str, request_id: str = "", kind: str = "ErrorResponse") -> Payload:
    body = {"resultCode": 500, "errorCode": code, "message": message, "requestId": request_id}
    return _payload(kind, {**body, "success": False, **_REQUIRED_FIELDS.get(kind, {})})


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NacosDouble:
    """An in-process Nacos 2.x naming server for tests; see the package docstring for its scope.

    ``port`` is the Nacos "server port" a client is configured with (``host:port``); the gRPC
    port the client actually dials is ``port + 1000``.  ``port=0`` picks a free pair.  ``users``
    turns authentication on: login on the HTTP port must match, and naming requests must carry
    the token it returned.  ``push_delay`` (seconds) lets changes to one service within that time
    go out as one push, as Nacos's push delay task does (Nacos waits about 0.5 s).
    ``max_metadata_length`` is Nacos's limit on an instance's metadata (characters of keys plus
    values, 1024 by default since 2.3; None turns the check off, as a server configured without it).

    ``stats`` counts pushes written and acks received (naming and config together), for tests that
    want to see the stream work.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        users: Mapping[str, str] | None = None,
        push_delay: float = 0.0,
        max_metadata_length: int | None = METADATA_LIMIT,
    ) -> None:
        self.host = host
        self.max_metadata_length = max_metadata_length
        self._port = port
        self._users = dict(users) if users is not None else None
        self._push_delay = push_delay
        self.registry = Registry()
        self.configs = ConfigStore()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._transport_ids: dict[str, str] = {}  # peer -> connection id handed out by ServerCheck
        self._by_peer: dict[str, _Connection] = {}
        self._by_id: dict[str, _Connection] = {}
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self._push_pending: set[ServiceKey] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._request_ids = itertools.count(1)
        self._external_ids = itertools.count(1)
        self._external_owners: set[str] = set()
        self.stats = {"pushes": 0, "acks": 0}
        self._handlers: dict[str, Callable[[_Connection, dict[str, Any]], Reply]] = {
            "HealthCheckRequest": lambda _conn, _body: {},
            "InstanceRequest": self._instance,
            "BatchInstanceRequest": self._batch_instance,
            "PersistentInstanceRequest": self._persistent_instance,
            "ServiceQueryRequest": self._query,
            "SubscribeServiceRequest": self._subscribe,
            "ServiceListRequest": self._service_list,
            "ConfigQueryRequest": self._config_query,
            "ConfigPublishRequest": self._config_publish,
            "ConfigRemoveRequest": self._config_remove,
            "ConfigBatchListenRequest": self._config_listen,
        }

    # -- life cycle ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The Nacos server port (HTTP); 0 until ``start()`` picked one."""
        return self._port

    @property
    def grpc_port(self) -> int:
        return self._port + GRPC_PORT_OFFSET

    @property
    def address(self) -> str:
        """What a client's ``server_address`` should be."""
        return f"{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._grpc is not None

    @property
    def connections(self) -> int:
        """Connections that completed ConnectionSetupRequest and whose stream is open."""
        return len(self._by_id)

    async def start(self) -> None:
        if self._grpc is not None:
            return
        fixed = self._port != 0
        for _ in range(1 if fixed else 50):
            port = self._port if fixed else _free_port(self.host)
            if port + GRPC_PORT_OFFSET > 65535:
                continue
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            server.add_generic_rpc_handlers(
                (
                    grpc.method_handlers_generic_handler(
                        "Request",
                        {
                            "request": grpc.unary_unary_rpc_method_handler(
                                self._request,
                                request_deserializer=Payload.FromString,
                                response_serializer=Payload.SerializeToString,
                            )
                        },
                    ),
                    grpc.method_handlers_generic_handler(
                        "BiRequestStream",
                        {
                            "requestBiStream": grpc.stream_stream_rpc_method_handler(
                                self._bi_stream,
                                request_deserializer=Payload.FromString,
                                response_serializer=Payload.SerializeToString,
                            )
                        },
                    ),
                )
            )
            try:
                server.add_insecure_port(f"{self.host}:{port + GRPC_PORT_OFFSET}")
            except RuntimeError as exc:  # grpc's way of saying "address in use"
                if fixed:
                    raise OSError(f"cannot bind gRPC port {port + GRPC_PORT_OFFSET}: {exc}") from exc
                continue
            runner = web.AppRunner(self._http_app(), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, self.host, port, reuse_address=True).start()
            except OSError:
                await runner.cleanup()
                await server.stop(None)
                if fixed:
                    raise
                continue
            await server.start()
            self._grpc, self._http, self._port = server, runner, port
            log.info("nacos double on http %s:%d, grpc port %d", self.host, port, self.grpc_port)
            return
        raise OSError("no free port pair (port, port + 1000) found")

    async def stop(self) -> None:
        """Go away like a killed server: every connection, its ephemeral instances and its config
        listens are gone; configs stay (Nacos keeps them in its database)."""
        if self._grpc is None:
            return
        self._stopping = True  # the connections being dropped are all there is: no one to push to
        try:
            for conn in list(self._by_id.values()):
                self._drop(conn)
            # instances injected as "other clients" were ephemeral too: a restarted Nacos has none
            for owner in self._external_owners:
                self.registry.drop_owner(owner)
            self._external_owners.clear()
            for task in self._tasks:
                task.cancel()
            self._push_pending.clear()
            await self._grpc.stop(None)
            if self._http is not None:
                await self._http.cleanup()
        finally:
            self._grpc = self._http = None
            self._transport_ids.clear()
            self._stopping = False
        log.info("nacos double stopped")

    async def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, start on the same ports; persistent instances and
        configs stay."""
        await self.stop()
        if downtime > 0:
            await asyncio.sleep(downtime)
        await self.start()

    async def __aenter__(self) -> NacosDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests read and change -----------------------------------------------------------------

    def instances(self, service: str, group: str = DEFAULT_GROUP, namespace: str = "") -> list[Instance]:
        """Every instance of the service (disabled/unhealthy included), sorted by ip and port."""
        return self.registry.instances(service_key(service, group, namespace))

    def subscribers(self, service: str, group: str = DEFAULT_GROUP, namespace: str = "") -> int:
        return len(self.registry.subscribers(service_key(service, group, namespace)))

    def register_external(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "",
        weight: float = 1.0,
        healthy: bool = True,
        enabled: bool = True,
        cluster: str = DEFAULT_CLUSTER,
        metadata: Mapping[str, str] | None = None,
        ephemeral: bool = True,
    ) -> Instance:
        """Add an instance as if another SDK client had registered it, and push the change.

        Ephemeral ones belong to a client of their own, which goes away on ``stop()``; persistent
        ones stay until ``deregister_external``.
        """
        key = service_key(service, group, namespace)
        wire = {"ip": ip, "port": port, "weight": weight, "healthy": healthy, "enabled": enabled}
        instance = self._parse(
            {**wire, "clusterName": cluster, "metadata": dict(metadata or {})}, key, ephemeral
        )
        if ephemeral:
            owner = f"external-{next(self._external_ids)}"
            self._external_owners.add(owner)
            self.registry.publish(owner, key, [instance])
        else:
            self.registry.put_persistent(key, instance)
        self._changed(key)
        return instance

    def deregister_external(
        self, service: str, ip: str, port: int, *, group: str = DEFAULT_GROUP, namespace: str = ""
    ) -> bool:
        """Remove the instances at ip:port that ``register_external`` added, and any persistent
        instance there; True if there were any."""
        key = service_key(service, group, namespace)
        removed = False
        for owner in self._external_owners & set(self.registry.owners(key)):
            if any(i.ip == ip and i.port == port for i in self.registry.entry(owner, key)):
                removed |= self.registry.unpublish(owner, key)
        for instance in self.registry.instances(key):
            if not instance.ephemeral and instance.ip == ip and instance.port == port:
                removed |= self.registry.remove_persistent(key, ip, port, instance.cluster)
        if removed:
            self._changed(key)
        return removed

    def update_instance(
        self,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "",
        **fields: Any,
    ) -> int:
        """Change ``healthy``/``enabled``/``weight``/``metadata`` of the instances at ip:port, as an
        operator would in the console, and push.  A later registration by the owning client replaces
        the change (Nacos keeps console edits apart; the double does not).  Returns how many changed."""
        unknown = set(fields) - {"healthy", "enabled", "weight", "metadata"}
        if unknown:
            raise TypeError(f"cannot change {sorted(unknown)}")
        key = service_key(service, group, namespace)
        count = self.registry.update(key, ip, port, **fields)
        if count:
            self._changed(key)
        return count

    def set_unhealthy(self, service: str, ip: str, port: int, unhealthy: bool = True, **where: str) -> int:
        return self.update_instance(service, ip, port, healthy=not unhealthy, **where)

    def set_enabled(self, service: str, ip: str, port: int, enabled: bool, **where: str) -> int:
        return self.update_instance(service, ip, port, enabled=enabled, **where)

    def set_weight(self, service: str, ip: str, port: int, weight: float, **where: str) -> int:
        return self.update_instance(service, ip, port, weight=float(weight), **where)

    def publish_config(
        self,
        data_id: str,
        content: str,
        *,
        group: str = DEFAULT_GROUP,
        namespace: str = "",
        type: str = "text",
    ) -> Config:
        """Write a config as an operator (or Dubbo Admin) would, and tell its listeners if the content
        changed.  Refused (``Failed``) where Nacos refuses a publish: blank content, bad names."""
        check_names(data_id, group, namespace)
        check_write(data_id, group, content)
        return self._write_config((tenant_of(namespace), group, data_id), content, type=type)

    def remove_config(self, data_id: str, *, group: str = DEFAULT_GROUP, namespace: str = "") -> bool:
        """Delete a config and tell its listeners; True if there was one."""
        check_names(data_id, group, namespace)
        return self._delete_config((tenant_of(namespace), group, data_id))

    def config(self, data_id: str, *, group: str = DEFAULT_GROUP, namespace: str = "") -> Config | None:
        """The stored config ("" and "public" are the default namespace, as for the SDK's requests)."""
        return self.configs.get((tenant_of(namespace), group, data_id))

    def config_listeners(
        self, data_id: str, *, group: str = DEFAULT_GROUP, namespace: str = ""
    ) -> dict[str, str]:
        """Connection id -> the md5 it last listened with, for the key as a client sends it (the
        namespace is not normalised here, as Nacos 2.x does not normalise it in a listen)."""
        return self.configs.listeners((namespace, group, data_id))

    # -- gRPC: unary requests ---------------------------------------------------------------------

    async def _request(self, payload: Payload, context: grpc.aio.ServicerContext) -> Payload:
        kind = payload.metadata.type
        try:
            body = _decode(payload)
        except ValueError as exc:
            return _error(BAD_GATEWAY, f"invalid request body: {exc}")
        request_id = str(body.get("requestId") or "")
        peer = context.peer()
        if kind == "ServerCheckRequest":
            host, port = _peer_address(peer)
            connection_id = f"{int(time.time() * 1000)}_{host}_{port}"
            self._transport_ids[peer] = connection_id
            return _ok("ServerCheckResponse", request_id, connectionId=connection_id)
        handler = self._handlers.get(kind)
        if handler is None:
            return _error(NO_HANDLER, "RequestHandler Not Found", request_id)
        conn = self._by_peer.get(peer)
        if conn is None:
            return _error(UN_REGISTER, "Connection is unregistered.", request_id)
        response_type = _RESPONSE_TYPES.get(kind, "HealthCheckResponse")
        if kind in _RESPONSE_TYPES and not self._authorized(payload.metadata.headers):
            return _error(NO_RIGHT, "token invalid!", request_id, response_type)
        try:
            fields = handler(conn, body)
        except Failed as exc:
            return _error(exc.code, str(exc), request_id, response_type)
        except InvalidRequest as exc:
            return _error(exc.code, str(exc), request_id)
        except (TypeError, ValueError) as exc:  # a malformed body; Nacos answers those with 500
            return _error(SERVER_ERROR, f"{type(exc).__name__}: {exc}", request_id)
        return _ok(response_type, request_id, **fields)

    @staticmethod
    def _key(body: Mapping[str, Any]) -> ServiceKey:
        name, group, namespace = (str(body.get(k) or "") for k in ("serviceName", "groupName", "namespace"))
        return service_key(name, group, namespace)

    def _parse(self, data: Any, key: ServiceKey, ephemeral: bool) -> Instance:
        return Instance.from_wire(data, key, ephemeral=ephemeral, metadata_limit=self.max_metadata_length)

    def _instance(self, conn: _Connection, body: dict[str, Any]) -> Reply:
        key = self._key(body)
        kind = body.get("type")
        if kind == "registerInstance":
            self.registry.publish(conn.id, key, [self._parse(body.get("instance"), key, True)])
        elif kind == "deregisterInstance":
            self.registry.unpublish(conn.id, key)
        else:
            raise InvalidRequest(f"Unsupported request type {kind}")
        self._changed(key)
        return {"type": kind}

    def _batch_instance(self, conn: _Connection, body: dict[str, Any]) -> Reply:
        key = self._key(body)
        if body.get("type") != "batchRegisterInstance":
            raise InvalidRequest(f"Unsupported request type {body.get('type')}")
        raw = body.get("instances") or []
        if not isinstance(raw, list):
            raise InvalidRequest("Param 'instances' is illegal, instances is not a list")
        instances = [self._parse(data, key, True) for data in raw]
        self.registry.publish(conn.id, key, instances)
        self._changed(key)
        return {"type": "batchRegisterInstance"}

    def _persistent_instance(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        key = self._key(body)
        kind = body.get("type")
        instance = self._parse(body.get("instance"), key, False)
        if kind == "registerInstance":
            self.registry.put_persistent(key, instance)
        elif kind == "deregisterInstance":
            self.registry.remove_persistent(key, instance.ip, instance.port, instance.cluster)
        else:
            raise InvalidRequest(f"Unsupported request type {kind}")
        self._changed(key)
        return {"type": kind}

    def _query(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        key = self._key(body)
        clusters = check_clusters(str(body.get("cluster") or ""))
        return {
            "serviceInfo": self.registry.service_info(
                key, clusters, healthy_only=bool(body.get("healthOnly"))
            )
        }

    def _subscribe(self, conn: _Connection, body: dict[str, Any]) -> Reply:
        key = self._key(body)
        clusters = check_clusters(str(body.get("clusters") or ""))
        if body.get("subscribe", True):
            self.registry.subscribe(conn.id, key, clusters)
        else:
            self.registry.unsubscribe(conn.id, key)
        # Nacos answers a subscribe with every instance, disabled ones too (only pushes filter them).
        return {"serviceInfo": self.registry.service_info(key, clusters, enabled_only=False)}

    def _service_list(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        # service_key only to check and default the namespace and group; "-" stands in for a name
        namespace, group, _ = service_key(
            "-", str(body.get("groupName") or ""), str(body.get("namespace") or "")
        )
        names = self.registry.service_names(namespace, group)
        page_no, page_size = int(body.get("pageNo") or 1), int(body.get("pageSize") or 10)
        start = max(page_no - 1, 0) * page_size
        return {"count": len(names), "serviceNames": names[start : start + page_size]}

    # -- config requests ------------------------------------------------------------------------------

    @staticmethod
    def _config_names(body: Mapping[str, Any]) -> tuple[str, str, str]:
        """(dataId, group, tenant) as sent, through the parameter checker."""
        data_id, group, tenant = (str(body.get(k) or "") for k in ("dataId", "group", "tenant"))
        check_names(data_id, group, tenant)
        return data_id, group, tenant

    def _config_query(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        # The query's tag selects a tag gray; with none stored Nacos answers the formal config.
        data_id, group, tenant = self._config_names(body)
        config = self.configs.get((tenant_of(tenant), group, data_id))
        if config is None:
            raise Failed("config data not exist", CONFIG_NOT_FOUND)
        return config.to_wire()

    def _config_publish(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        data_id, group, tenant = self._config_names(body)
        content = body.get("content")
        check_write(data_id, group, content if isinstance(content, str) else "")
        addition = body.get("additionMap") or {}
        if not isinstance(addition, Mapping):
            raise TypeError("additionMap is not an object")
        if addition.get("betaIps") or addition.get("tag"):
            raise Failed("beta and tag (gray) publishing is not implemented by the double", SERVER_ERROR)
        self._write_config(
            (tenant_of(tenant), group, data_id),
            str(content),
            type=str(addition.get("type") or ""),
            cas_md5=str(body.get("casMd5") or ""),
            encrypted_data_key=str(addition.get("encryptedDataKey") or ""),
        )
        return {}

    def _config_remove(self, _conn: _Connection, body: dict[str, Any]) -> Reply:
        data_id, group, tenant = self._config_names(body)
        try:
            check_write(data_id, group, None)
        except Failed as exc:  # ConfigRemoveResponse.buildFailResponse(message): errorCode stays 0
            raise Failed(str(exc), 0) from None
        self._delete_config((tenant_of(tenant), group, data_id))
        return {}

    def _config_listen(self, conn: _Connection, body: dict[str, Any]) -> Reply:
        contexts = body.get("configListenContexts") or []
        if not isinstance(contexts, list) or not all(isinstance(c, Mapping) for c in contexts):
            raise TypeError("configListenContexts is not a list of objects")
        names = [(*self._config_names(context), str(context.get("md5") or "")) for context in contexts]
        changed = []
        for data_id, group, tenant, md5 in names:
            key = (tenant, group, data_id)  # as sent: Nacos 2.x keys listens by the raw tenant
            if not body.get("listen", True):
                self.configs.unlisten(conn.id, key)
            elif not self.configs.listen(conn.id, key, md5):
                changed.append({"dataId": data_id, "group": group, "tenant": tenant})
        return {"changedConfigs": changed}

    def _write_config(self, key: ConfigKey, content: str, **options: str) -> Config:
        if self.configs.publish(key, content, **options):
            self._config_changed(key)
        config = self.configs.get(key)
        assert config is not None
        return config

    def _delete_config(self, key: ConfigKey) -> bool:
        removed = self.configs.remove(key)
        if removed:
            self._config_changed(key)
        return removed

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self._users is None:
            return True
        expiry = self._tokens.get(headers.get("accessToken", ""))
        return expiry is not None and expiry > time.monotonic()

    # -- gRPC: the bi-directional stream ------------------------------------------------------------

    async def _bi_stream(self, _requests: Any, context: grpc.aio.ServicerContext) -> None:
        peer = context.peer()
        conn: _Connection | None = None
        try:
            while True:
                payload = await context.read()
                if payload is grpc.aio.EOF:
                    return
                kind = payload.metadata.type
                try:
                    body = _decode(payload)
                except ValueError:
                    log.warning("undecodable %s on the stream from %s", kind, peer)
                    continue
                if kind == "ConnectionSetupRequest" and conn is None:
                    # Nacos ties the connection id to the transport; ServerCheck has handed it out.
                    host, port = _peer_address(peer)
                    conn_id = self._transport_ids.get(peer) or f"{int(time.time() * 1000)}_{host}_{port}"
                    conn = _Connection(
                        id=conn_id,
                        peer=peer,
                        context=context,
                        client_version=str(body.get("clientVersion") or ""),
                        labels=dict(body.get("labels") or {}),
                    )
                    self._by_id[conn_id] = self._by_peer[peer] = conn
                    log.info("connection %s registered (%s)", conn_id, conn.client_version)
                elif kind.endswith("Response") and conn is not None:
                    if str(body.get("requestId")) in conn.unacked:
                        conn.unacked.discard(str(body.get("requestId")))
                        self.stats["acks"] += 1
                else:
                    log.info("ignored %s on the stream from %s", kind, peer)
        finally:
            if conn is not None:
                self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        if self._by_id.get(conn.id) is not conn:
            return  # already dropped (stop() goes first, then the stream handler's finally)
        del self._by_id[conn.id]
        if self._by_peer.get(conn.peer) is conn:
            del self._by_peer[conn.peer]
            self._transport_ids.pop(conn.peer, None)
        log.info("connection %s closed", conn.id)
        self.configs.drop_owner(conn.id)
        for key in self.registry.drop_owner(conn.id):
            self._changed(key)

    # -- pushes -------------------------------------------------------------------------------------

    def _changed(self, key: ServiceKey) -> None:
        """Schedule one push of ``key`` to its subscribers; changes until it runs share it."""
        if self._stopping or self._grpc is None or key in self._push_pending:
            return
        self._push_pending.add(key)
        loop = asyncio.get_running_loop()
        loop.call_later(self._push_delay, self._spawn, key)

    def _spawn(self, key: ServiceKey) -> None:
        if key not in self._push_pending:
            return  # stop() came first
        self._run(self._push(key))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, key: ServiceKey) -> None:
        self._push_pending.discard(key)
        sends = []
        for conn_id, clusters in self.registry.subscribers(key).items():
            conn = self._by_id.get(conn_id)
            if conn is None:
                continue
            request_id = str(next(self._request_ids))
            body = {
                "headers": {},
                "requestId": request_id,
                "module": "naming",
                "namespace": key[0],
                "serviceName": key[2],
                "groupName": key[1],
                "serviceInfo": self.registry.service_info(key, clusters),
            }
            conn.unacked.add(request_id)
            sends.append(self._send(conn, _payload("NotifySubscriberRequest", body)))
        await asyncio.gather(*sends)

    def _config_changed(self, key: ConfigKey) -> None:
        """Push ``ConfigChangeNotifyRequest`` to every connection listening to ``key``, at once (Nacos's
        ``RpcConfigChangeNotifier``); the client then asks for the content itself."""
        if self._stopping or self._grpc is None:
            return
        for conn_id in self.configs.listeners(key):
            conn = self._by_id.get(conn_id)
            if conn is None:
                continue
            request_id = str(next(self._request_ids))
            body = {
                "headers": {},
                "requestId": request_id,
                "module": "config",
                "dataId": key[2],
                "group": key[1],
                "tenant": key[0],
            }
            conn.unacked.add(request_id)
            self._run(self._send(conn, _payload("ConfigChangeNotifyRequest", body)))

    async def _send(self, conn: _Connection, payload: Payload) -> None:
        try:
            async with conn.write_lock:
                await conn.context.write(payload)
            self.stats["pushes"] += 1
        except Exception as exc:  # the stream is going away; its handler's finally drops the connection
            log.info("push to %s failed: %s", conn.id, exc)

    # -- HTTP: login, and a read-only view for people poking at the double -------------------------

    def _http_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/nacos/v1/auth/users/login", self._login)
        app.router.add_post("/nacos/v1/auth/login", self._login)
        app.router.add_get("/nacos/v1/ns/instance/list", self._http_instances)
        app.router.add_get("/nacos/v1/cs/configs", self._http_config)
        return app

    async def _login(self, request: web.Request) -> web.Response:
        # nacos-sdk-python sends the credentials as query parameters; other SDKs post a form.
        params: dict[str, str] = dict(request.query)
        params.update({k: str(v) for k, v in (await request.post()).items()})
        username = params.get("username", "")
        if self._users is not None and self._users.get(username) != params.get("password"):
            return web.Response(status=403, text="unknown user!")
        token = secrets.token_hex(16)
        self._tokens[token] = time.monotonic() + TOKEN_TTL_S
        return web.json_response(
            {"accessToken": token, "tokenTtl": TOKEN_TTL_S, "globalAdmin": True, "username": username}
        )

    async def _http_instances(self, request: web.Request) -> web.Response:
        name = request.query.get("serviceName", "")
        group = request.query.get("groupName", "")
        if "@@" in name:  # the v1 API also takes "group@@service"
            group, name = name.split("@@", 1)
        try:
            key = service_key(name, group, request.query.get("namespaceId", ""))
        except InvalidRequest as exc:
            return web.Response(status=400, text=str(exc))
        healthy_only = request.query.get("healthyOnly", "false").lower() == "true"
        info = self.registry.service_info(key, request.query.get("clusters", ""), healthy_only=healthy_only)
        return web.json_response({**info, "name": f"{key[1]}@@{key[2]}"})

    async def _http_config(self, request: web.Request) -> web.Response:
        query = request.query
        key = (tenant_of(query.get("tenant", "")), query.get("group", ""), query.get("dataId", ""))
        config = self.configs.get(key)
        if config is None:
            return web.Response(status=404, text="config data not exist")
        return web.Response(text=config.content, headers={"Content-MD5": config.md5})
