"""A Nacos 2.x naming server double, spoken to by the official nacos-sdk-python client unchanged.

No Nacos server can be installed where the tests run, so this package implements the part of
Nacos's published gRPC protocol that a naming client uses, from the protocol (nacos_grpc_service.proto,
the request/response classes' JSON) and from what Nacos documents about its behaviour.

Ports: the client is configured with ``host:port`` and dials gRPC on ``port + 1000``.  The double
listens on both; the HTTP port serves only what a naming client needs over HTTP (login, when the
client has a username and password) plus a read-only instance list for people.

Implemented (gRPC service ``Request``, unary; ``BiRequestStream``, bi-directional):

* ``ServerCheckRequest`` -> ``ServerCheckResponse`` with the connection id of the transport;
* ``ConnectionSetupRequest`` on the stream registers the connection; unary requests from a transport
  without a registered connection get ``ErrorResponse`` 301 "Connection is unregistered.";
* ``HealthCheckRequest``;
* ``InstanceRequest`` register/deregister (ephemeral; one entry per service and connection, a new
  registration replaces the previous one), ``BatchInstanceRequest`` (batchRegisterInstance: the
  connection's whole list for the service), ``PersistentInstanceRequest`` register/deregister;
* ``ServiceQueryRequest`` (cluster and healthyOnly filters), ``SubscribeServiceRequest``
  subscribe/unsubscribe (answers the current service info), ``ServiceListRequest``;
* ``NotifySubscriberRequest`` pushed on the stream to every subscriber when a service's instances
  change (acked by ``NotifySubscriberResponse``);
* a connection whose stream ends loses its ephemeral instances and subscriptions, and the other
  subscribers are pushed the new list; ``stop()``/``restart()`` drop every connection;
* HTTP ``POST /nacos/v1/auth/users/login`` (tokens are checked on naming requests when the double
  is created with ``users``), ``GET /nacos/v1/ns/instance/list`` (read-only).

Not implemented: the config module (ConfigQueryRequest etc. get 302 "RequestHandler Not Found"),
clusters of servers and Distro sync, TLS, ``ConnectResetRequest`` and server-side
``ClientDetectionRequest`` probing, push retries when a client does not ack, namespaces as managed
objects (any namespace id is accepted), the persistent/ephemeral kind of a service (Nacos refuses to
mix them in one service), service metadata, selectors and the protection threshold, the HTTP
naming API beyond the read-only list, and console edits kept apart from registrations.

Run it alone with ``python -m tests.peers.nacos --port 8848`` (gRPC on 9848).
"""

from tests.peers.nacos.model import DEFAULT_GROUP, Instance
from tests.peers.nacos.server import GRPC_PORT_OFFSET, NacosDouble

__all__ = ["DEFAULT_GROUP", "GRPC_PORT_OFFSET", "Instance", "NacosDouble"]
