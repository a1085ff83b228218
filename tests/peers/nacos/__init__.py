"""A Nacos 2.x naming and config server double, spoken to by the official nacos-sdk-python client
unchanged.

No Nacos server can be installed where the tests run, so this package implements the part of
Nacos's published gRPC protocol that naming and config clients use, from the protocol
(nacos_grpc_service.proto, the request/response classes' JSON) and from Nacos's sources and what it
documents about its behaviour.

Ports: the client is configured with ``host:port`` and dials gRPC on ``port + 1000``.  The double
listens on both; the HTTP port serves only what a client needs over HTTP (login, when the client
has a username and password) plus a read-only instance list and config read for people.

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
* config (configs.py has the rules): ``ConfigQueryRequest`` (errorCode 300 "config data not
  exist" for a missing config, which the SDK turns into content ""), ``ConfigPublishRequest``
  (with compare-and-set ``casMd5``), ``ConfigRemoveRequest``, ``ConfigBatchListenRequest`` (keeps
  the connection's listens and answers at once the keys whose md5 differs from the client's), and
  ``ConfigChangeNotifyRequest`` pushed on the stream to every listening connection when a config's
  md5 changes; configs survive ``stop()``/``restart()``, listens do not;
* ``publish_config``/``remove_config`` write configs as an operator would, ``config``,
  ``configs.all()`` and ``config_listeners`` show what is stored and who listens with which md5;
* HTTP ``POST /nacos/v1/auth/users/login`` (tokens are checked on naming and config requests when
  the double is created with ``users``), ``GET /nacos/v1/ns/instance/list`` and
  ``GET /nacos/v1/cs/configs`` (read-only).

Any other request gets 302 "RequestHandler Not Found", as a 2.x server answers requests it has no
handler for (e.g. the 3.x ``ConfigFuzzyWatchRequest``; nacos-sdk-python 2.0.11 sends none).

Not implemented: clusters of servers and Distro sync, TLS, ``ConnectResetRequest`` and server-side
``ClientDetectionRequest`` probing, push retries when a client does not ack, namespaces as managed
objects (any namespace id is accepted), the persistent/ephemeral kind of a service (Nacos refuses to
mix them in one service), service metadata, selectors and the protection threshold, the HTTP
naming API beyond the read-only list, console edits kept apart from registrations, beta and tag
(gray) configs (a gray publish is refused), config history, and the HTTP config API beyond the read.

Run it alone with ``python -m tests.peers.nacos --port 8848`` (gRPC on 9848).
"""

from tests.peers.nacos.configs import Config
from tests.peers.nacos.model import DEFAULT_GROUP, Failed, Instance
from tests.peers.nacos.server import GRPC_PORT_OFFSET, NacosDouble

__all__ = ["DEFAULT_GROUP", "GRPC_PORT_OFFSET", "Config", "Failed", "Instance", "NacosDouble"]
