"""``zookeeper://``: the Dubbo interface-level layout in ZooKeeper, over kazoo.

Layout: ``/dubbo/{interface}/{providers|consumers}/{java_url_encode(url)}``; the parents are
persistent, the leaves ephemeral (they go with our session).

Threads: kazoo runs its own connection and callback threads.  Nothing here blocks the event loop
and nothing runs our logic on kazoo's threads: every kazoo result, state change and watch event is
handed to the loop with ``loop.call_soon_threadsafe`` (kazoo also forbids blocking calls inside
its listeners).  Requests use kazoo's ``*_async`` calls bridged to asyncio futures, each bounded
by ``op_timeout_s``.

Sessions (what kazoo does, and what we do about it):

* connection dropped -> kazoo reports SUSPENDED and *drops every watch client-side* (it fires them
  with a NONE event and, unlike the Java client, does not re-send them after a reconnect).  We keep
  the last provider lists as they are, and deliver no rule change (the rules in force stay).
* reconnected within the session timeout -> CONNECTED, same session: ephemeral nodes are still
  there.  We re-arm every watch by re-reading its path (changes made meanwhile are delivered), check
  our nodes exist, and delete the nodes of registrations withdrawn while we were away.
* session expired -> LOST, then kazoo connects with a *new* session -> CONNECTED.  Our ephemeral
  nodes are gone: we re-create every one (a leftover owned by another session is deleted and
  created again) and re-read every watched path, delivering the lists.

Dynamic rules (the config center, regproxy.governance): a rule is the node
``/dubbo/config/dubbo/<rule id>`` (``TreePathDynamicConfiguration``).  A watched rule has one data
watch, shared by its listeners: ``get`` while the node exists, ``exists`` while it does not, so its
creation fires too.  Its text is delivered with the node's mzxid as version, a deleted node as None
and an emptied one as "": a modification, as Dubbo's ``ZookeeperDataListener`` reports it.  Events
are coalesced as for providers, and a read is delivered only when (text, version) differs from the
last one delivered, so the re-read of every rule after a reconnect delivers just what changed
meanwhile.  The 2.6-era ``override://`` URLs under ``/dubbo/{interface}/configurators`` are a
children watch, as providers are.

Dubbo 3 application-level discovery (facts from apache/dubbo 3.3; the class named at each):

* An instance is the ephemeral node ``/services/<app>/<host:port>`` holding Curator's JSON
  (``ZookeeperServiceDiscovery``, ``CuratorFrameworkUtils``; regproxy.registry.instances).  Ours are
  remembered with the provider nodes and re-created the same way after a session loss; registering
  the same address again rewrites the node's data, as Curator's ``updateService`` does for a new
  revision.  A watch on an application is a children watch of ``/services/<app>`` plus a data watch
  on each child (Curator's ``ServiceCache``), so a revision change, a setData on the same node, is
  seen too; after a reconnect every child is read again (kazoo dropped their watches).
* The service-name mapping is the persistent node ``/dubbo/mapping/<interface>``, application names
  joined by ``,`` (``ZookeeperMetadataReport``).  Adding one is a compare-and-set on the node's
  version, retried when another writer was first (``MetadataServiceNameMapping.map``).  A watched
  mapping is a data watch as a rule's is; its creation and changes are delivered, its deletion is
  not (``ZookeeperMetadataReport.MappingDataListener`` ignores NodeDeleted): the applications found
  stay found.
* The remote metadata report is the persistent node ``/dubbo/metadata/<app>/<revision>`` holding the
  ``MetadataInfo`` as JSON (``ZookeeperMetadataReport.publishAppMetadata``/``getAppMetadata``).

Credentials (``?username=u&password=p``): kazoo sends them as ``digest`` auth, and the nodes we
create get the ACL the URL's ``acl`` names (see :func:`acl_profile`): our instances that of our
provider nodes, the mapping and metadata nodes that of the persistent nodes we create.
ZooKeeper's digest scheme accepts any password at login (it only names an identity), so a wrong
password shows only against ACLs already written: on connect we compare our digest with the
``/dubbo`` node's ACL, and a create refused with NoAuth is looked at the same way.  A mismatch is
state ``auth_failed`` (not ready), with the reason in the log and in /readyz; the password itself
is never shown.

Outages: kazoo logs every reconnection attempt (one or two lines each 1-2 s); its logger is a
:class:`~regproxy.registry.repeats.QuietLog` that lets one of each kind through per
``KAZOO_REPEAT_S`` and tells us of each failed attempt, so a registry that never connected is known
to be unreachable after its first attempt (see registry/base.py for the two lines we log).

Our state is "connected" only once that recovery is done, so "connected" means "our nodes are in
ZooKeeper and our watches are armed".  While not connected, registering, watching and the rule
requests raise RegistryUnavailable at once (no request is queued behind a dead connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.protocol.states import EventType, KazooState, WatchedEvent
from kazoo.retry import KazooRetry
from kazoo.security import ACL, OPEN_ACL_UNSAFE, Id, Permissions, make_digest_acl_credential

from regproxy.governance.configurator import parse_override_url
from regproxy.governance.keys import legacy_configurators_path, zk_rule_path
from regproxy.registry.base import (
    AUTH_FAILED,
    CONNECTED,
    CONNECTING,
    LOST,
    STOPPED,
    SUSPENDED,
    InstancesListener,
    MappingListener,
    ProvidersListener,
    Registry,
    RegistryError,
    RegistryUnavailable,
    RuleListener,
)
from regproxy.registry.instances import (
    DUBBO_ROOT,
    AppInstance,
    instance_path,
    instances_path,
    mapping_apps,
    mapping_path,
    mapping_with,
    parse_curator,
    path_segment,
    to_curator,
)
from regproxy.registry.metadata_info import MetadataInfo, dump_json, parse_json
from regproxy.registry.registry_url import RegistryURL
from regproxy.registry.repeats import QuietLog
from regproxy.registry.url import CONSUMERS, PROVIDERS, DubboURL, Subscription, java_url_decode

__all__ = ["ROOT", "ZooKeeperRegistry", "acl_profile", "metadata_path", "node_path", "providers_path"]

log = logging.getLogger(__name__)

ROOT = "/dubbo"
_CATEGORIES = frozenset({PROVIDERS, CONSUMERS})
# kazoo errors that mean "no usable connection/session right now", as opposed to a refused request.
_UNAVAILABLE = (ConnectionLoss, SessionExpiredError, OperationTimeoutError)  # ConnectionClosedError too
# kazoo errors _op's callers handle (a node missing or there already, a version moved on), or it
# explains (no rights).
_PASSED_THROUGH = (NoNodeError, NodeExistsError, BadVersionError, NoAuthError, AuthFailedError)
Item = TypeVar("Item")  # what a children watch delivers: provider or override URLs, or instances
# A listener of a children watch, with what it was bound with (a Subscription; an interface for
# override URLs; an application for instances), so that the same listener can be unbound for one of them.
_Binding = tuple[object, Callable[[list[Item]], None]]
_OVERRIDES = "configurators"  # the category folder of 2.6-era override URLs (legacy_configurators_path)
_INSTANCES = "instances"  # the category of an application's instance watch (no folder of that name)
# MetadataServiceNameMapping.map: a mapping CAS is tried again up to 10 times (DEFAULT_CAS_RETRY_TIMES),
# each after a random wait below 100 ms (DEFAULT_CAS_RETRY_WAIT_TIME).
_CAS_ATTEMPTS = 11
_CAS_WAIT_S = 0.1
_METADATA = "metadata"  # BaseApplicationMetadataIdentifier's DEFAULT_PATH_TAG
_RECOVERY_ATTEMPTS = 3  # while connected, steps that timed out are tried again (0.5 s apart)
KAZOO_REPEAT_S = 60.0  # while reconnecting, each kind of kazoo log line at most once a minute
# How kazoo's connection handler words a failed connection attempt (kazoo/protocol/connection.py).
_KAZOO_CONNECT_FAILED = ("Connection dropped: ", "Connection time-out: ", "Cannot resolve ")


def providers_path(interface: str) -> str:
    return f"{ROOT}/{path_segment(interface, 'interface')}/{PROVIDERS}"


def node_path(url: DubboURL) -> str:
    """Where ``url`` is registered: ``/dubbo/{interface}/{category}/{encoded url}``."""
    category = url.category
    if category not in _CATEGORIES:
        raise ValueError(f"cannot register a URL of category {category!r} (providers or consumers only)")
    return f"{ROOT}/{path_segment(url.interface, 'interface')}/{category}/{url.encoded()}"


def metadata_path(app: str, revision: str) -> str:
    """Where the remote metadata report holds ``app``'s MetadataInfo at ``revision``:
    ``/dubbo/metadata/<app>/<revision>`` (ZookeeperMetadataReport.getNodePath of a
    SubscriberMetadataIdentifier)."""
    return f"{DUBBO_ROOT}/{_METADATA}/{path_segment(app, 'application')}/{path_segment(revision, 'revision')}"


_WORLD = Id("world", "anyone")
_READ_ACL = "read the ACL of"


def acl_profile(name: str, username: str, password: str) -> tuple[list[ACL], list[ACL]]:
    """(ACL of our ephemeral provider/consumer nodes, ACL of the persistent parents we create).

    The digest user always has every right.  Besides it:

    * ``world-read`` (default): anyone may read, so Dubbo apps without credentials still discover
      providers; nobody else may add, change or delete nodes under what we created.
    * ``shared``: as world-read, and anyone may *create* children under the parents we create, so
      Dubbo apps without credentials can still register next to us (ZooKeeper checks a delete against
      the parent's DELETE right, which stays ours: they cannot remove our nodes).
    * ``private``: nobody else, not even to read.
    * ``open``: anyone may do anything (ZooKeeper's own default); the credentials only authenticate.
    """
    mine = ACL(Permissions.ALL, Id("digest", make_digest_acl_credential(username, password)))
    if name == "open":
        return list(OPEN_ACL_UNSAFE), list(OPEN_ACL_UNSAFE)
    if name == "private":
        return [mine], [mine]
    read = ACL(Permissions.READ, _WORLD)
    if name == "shared":
        return [mine, read], [mine, ACL(Permissions.READ | Permissions.CREATE, _WORLD)]
    if name == "world-read":
        return [mine, read], [mine, read]
    raise ValueError(f"unknown zookeeper acl {name!r}")


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0]


class _AuthMismatch(RegistryError):
    """Our digest credentials do not match the ACL of a node we must write under."""


def _provider(leaf: str) -> DubboURL:
    return DubboURL.parse(java_url_decode(leaf))


@dataclass(eq=False)
class _Watched:
    """The one kazoo watch of a path, shared by every listener of that path."""

    path: str
    pending: int = 0  # watch calls still reading it: the watch must outlive them
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one read at a time
    task: asyncio.Task[None] | None = None  # the pending event-driven re-read
    dirty: bool = False  # an event arrived while the re-read ran: read again
    # The kazoo watch callback.  Always the same object, so kazoo's per-path watcher set holds it
    # once however often the path is read again (and, for instances, on every child's path).
    watcher: Callable[[WatchedEvent], None] | None = None

    def note_event(self, path: str) -> None:
        """An event fired for ``path`` (this watch's, or one of its children's): nothing to note here."""


W = TypeVar("W", bound=_Watched)


@dataclass(eq=False, kw_only=True)
class _Watch(_Watched, Generic[Item]):
    """A children watch: an interface's providers, or its 2.6-era override URLs (``category``), or an
    application's instances (:class:`_InstancesWatch`)."""

    interface: str  # the application, for instances
    category: str  # PROVIDERS, _OVERRIDES or _INSTANCES
    # A leaf's name -> its item; ValueError when it is none.  None where parse_leaf reads otherwise.
    parse: Callable[[str], Item] | None = None
    bindings: list[_Binding[Item]] = field(default_factory=list)
    leaves: frozenset[str] | None = None  # last listed leaf names; None = never read
    items: list[Item] = field(default_factory=list)  # what was last delivered
    parsed: dict[str, Item] = field(default_factory=dict)  # leaf -> item of the last listing
    bad_leaves: set[str] = field(default_factory=set)  # warned about once

    def parse_leaf(self, leaf: str) -> Item:
        assert self.parse is not None
        return self.parse(leaf)


@dataclass(eq=False, kw_only=True)
class _InstancesWatch(_Watch[AppInstance]):
    """An application's instances: the children of ``/services/<app>``, each leaf's data read and
    watched too, as Curator's ``ServiceCache`` (a ``PathChildrenCache`` with data) does for Dubbo's
    ``ZookeeperServiceDiscovery``: a new revision rewrites the data of the same node."""

    data: dict[str, bytes] = field(default_factory=dict)  # leaf -> its data as last read
    stale: set[str] = field(default_factory=set)  # leaves whose data watch fired: read them again
    rearm: bool = False  # reconnected: kazoo dropped every data watch, so read every leaf again

    def note_event(self, path: str) -> None:
        leaf = path.removeprefix(self.path + "/")
        if leaf != path and "/" not in leaf:
            self.stale.add(leaf)

    def parse_leaf(self, leaf: str) -> AppInstance:
        return parse_curator(self.data[leaf], app=self.interface)


@dataclass(eq=False, kw_only=True)
class _RuleWatch(_Watched):
    """A data watch on a dynamic rule's node."""

    rule_id: str
    listeners: list[RuleListener] = field(default_factory=list)
    content: tuple[str | None, str] | None = None  # (text, version) last delivered; None = never read


@dataclass(eq=False, kw_only=True)
class _MappingWatch(_Watched):
    """A data watch on an interface's service-name mapping node (``/dubbo/mapping/<interface>``)."""

    interface: str
    listeners: list[MappingListener] = field(default_factory=list)
    # What the listeners were given: the node's applications when last read, None = never read.  A
    # deletion leaves it as it is (not a change: see the module docstring), so that every listener,
    # one added since too, holds the same list.
    apps: tuple[str, ...] | None = None


class ZooKeeperRegistry(Registry):
    """A Dubbo ZooKeeper registry, and config center.  All public methods are called on the event loop."""

    config_center = True
    app_discovery = True

    def __init__(
        self,
        url: RegistryURL,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        session_timeout_s: float = 10.0,
        op_timeout_s: float = 5.0,
        reconnect_max_delay_s: float = 2.0,
        removal_hold_s: float = 0.03,
    ) -> None:
        if url.scheme != "zookeeper":
            raise ValueError(f"not a zookeeper registry URL: {url}")
        super().__init__(str(url), op_timeout_s=op_timeout_s)
        self.url = url
        self._loop = loop
        self._session_timeout_s = session_timeout_s
        self._reconnect_max_delay_s = reconnect_max_delay_s
        # A weight change made by hand is a delete and a create: when a listing lost a provider,
        # wait this long and list again, so both usually land in one delivery instead of a list
        # briefly missing the provider (with one provider: a window of "no provider" errors).
        # Additions are delivered at once; events arriving during a listing are coalesced anyway.
        self._removal_hold_s = removal_hold_s
        # Every provider gone at once is delivered as it is: discovery holds an empty list back
        # (regproxy.discovery.protection), the same way for every registry.
        self._client: KazooClient | None = None
        self._kazoo_log = QuietLog(
            logging.getLogger("kazoo.client"), KAZOO_REPEAT_S, observe=self._kazoo_logged
        )
        # Node path -> what we registered there (a provider or consumer URL, an application instance):
        # re-created after a session loss.
        self._registered: dict[str, DubboURL | AppInstance] = {}
        # Paths to delete once connected again: unregistered (or failed to register) while away.
        self._stale: set[str] = set()
        self._watches: dict[str, _Watched] = {}  # path -> its one watch
        self._session_lost = False  # the next CONNECTED is a new session: re-create everything
        self._ever_connected = False
        self._recovery: asyncio.Task[None] | None = None
        self._state_changes = 0  # kazoo state events seen: a recovery reports only if none came since
        # Connection attempts refused since the last connection: kazoo tries the ensemble's members in
        # turn, so one refusal (a member down) is not the registry being unreachable.
        self._failed_attempts = 0
        self._stopping = False
        self._last_error = ""
        self._auth: list[tuple[str, str]] = []
        self._leaf_acl: list[ACL] | None = None  # None: kazoo's default (open), as without credentials
        self._parent_acl: list[ACL] | None = None
        self._digest_id: str | None = None  # "user:base64(sha1(user:password))", as ACLs hold it
        if url.username and url.acl is not None:
            password = url.password or ""
            self._auth = [("digest", f"{url.username}:{password}")]
            self._leaf_acl, self._parent_acl = acl_profile(url.acl, url.username, password)
            self._digest_id = make_digest_acl_credential(url.username, password)

    # -- introspection ----------------------------------------------------------------------------

    @property
    def session_id(self) -> int | None:
        cid = self._client.client_id if self._client is not None else None
        return cid[0] if cid else None

    @property
    def session_credentials(self) -> tuple[int, bytes] | None:
        """``(session id, password)`` of the current session; for expiry drills in tests."""
        cid = self._client.client_id if self._client is not None else None
        return (cid[0], cid[1]) if cid else None

    def describe(self) -> dict[str, Any]:
        sid = self.session_id
        return {
            "name": self.name,
            "state": self.state,
            "session_id": f"0x{sid:x}" if sid else None,
            "registered": sorted(str(n) for n in self._registered.values() if isinstance(n, DubboURL)),
            "registered_instances": sorted(
                p for p, n in self._registered.items() if isinstance(n, AppInstance)
            ),
            "pending_deletes": len(self._stale),
            "watched": {
                w.interface: {"subscriptions": len(w.bindings), "providers": len(w.items)}
                for w in self._children_watches(PROVIDERS)
            },
            "overrides": {
                w.interface: {"listeners": len(w.bindings), "urls": len(w.items)}
                for w in self._children_watches(_OVERRIDES)
            },
            "instances": {
                w.interface: {"listeners": len(w.bindings), "instances": len(w.items)}
                for w in self._children_watches(_INSTANCES)
            },
            "mappings": {
                w.interface: {"listeners": len(w.listeners), "apps": list(w.apps or ())}
                for w in sorted(self._watches.values(), key=lambda w: w.path)
                if isinstance(w, _MappingWatch)
            },
            "rules": {
                w.rule_id: {
                    "listeners": len(w.listeners),
                    "exists": w.content is not None and w.content[0] is not None,
                    "version": w.content[1] if w.content is not None else None,
                }
                for w in sorted(self._watches.values(), key=lambda w: w.path)
                if isinstance(w, _RuleWatch)
            },
            "last_error": self._last_error,
        }

    def _children_watches(self, category: str) -> list[_Watch[Any]]:
        watches = (w for w in self._watches.values() if isinstance(w, _Watch) and w.category == category)
        return sorted(watches, key=lambda w: w.interface)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._stopping:
            raise RegistryError(f"registry {self.name} was stopped; create a new one")
        if self._client is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        client = KazooClient(
            hosts=self.url.hosts_string,
            timeout=self._session_timeout_s,
            # Reconnect forever in the background; the backoff cap bounds how long after ZooKeeper
            # comes back we notice.
            connection_retry=KazooRetry(
                max_tries=-1, delay=0.1, backoff=2, max_delay=self._reconnect_max_delay_s
            ),
            # Only kazoo's own recipes use this (we do not): keep it bounded all the same.
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0),
            auth_data=self._auth or None,
            logger=self._kazoo_log,
        )
        client.add_listener(self._kazoo_state_listener)
        self._client = client
        client.start_async()  # only starts kazoo's threads: never waits for a server

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for task in [self._recovery, *(w.task for w in self._watches.values())]:
            if task is not None:
                task.cancel()
        client, self._client = self._client, None
        if client is not None and client.connected:
            paths = list(self._registered)
            if paths:
                # Closing the session would remove them too; deleting first makes consumers see the
                # provider go at once, even if the close request is lost.
                deletes = [asyncio.ensure_future(self._delete(p, client)) for p in paths]
                _, late = await asyncio.wait(deletes, timeout=self._op_timeout_s)
                for task in late:
                    task.cancel()
                for task in deletes:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        log.warning("registry %s: on stop: %s", self.name, task.exception())
        self._registered.clear()
        self._stale.clear()
        self._watches.clear()
        if client is not None:
            self._kazoo_log.stopping = True
            # kazoo's stop() joins its threads (up to 10 s when a reconnect is in progress): off-loop.
            closing = asyncio.ensure_future(asyncio.to_thread(_close_client, client))
            done, _ = await asyncio.wait([closing], timeout=max(self._op_timeout_s, 1.0))
            if not done:
                log.warning("registry %s: kazoo did not stop in time; leaving it to finish", self.name)
        self._set_state(STOPPED)

    # -- registrations ----------------------------------------------------------------------------

    async def register(self, url: DubboURL) -> None:
        path = node_path(url)
        self._require_connected(f"register {url.interface}")
        await self._register_node(path, url)

    async def unregister(self, url: DubboURL) -> None:
        await self._unregister_node(node_path(url))

    async def register_instance(self, instance: AppInstance) -> None:
        path = instance_path(instance)
        self._require_connected(f"register the instance {instance.id} of {instance.app}")
        await self._register_node(path, instance)

    async def unregister_instance(self, instance: AppInstance) -> None:
        await self._unregister_node(instance_path(instance))

    async def _register_node(self, path: str, node: DubboURL | AppInstance) -> None:
        """Create our ephemeral node at ``path`` (or give ours there ``node``'s data) and remember it."""
        try:
            await self._create_ephemeral(path, _node_data(node))
        except RegistryUnavailable:
            # The create may still reach the server (a reply lost with the connection): make sure a
            # node we do not remember is removed once we are connected again.  (One we remember
            # keeps what it was registered with: the recovery writes that back.)
            if path not in self._registered:
                self._stale.add(path)
            raise
        self._stale.discard(path)
        self._registered[path] = node

    async def _unregister_node(self, path: str) -> None:
        self._registered.pop(path, None)
        if not self.connected:
            # Deleted after the reconnect if the session survived; gone with the session otherwise.
            self._stale.add(path)
            return
        try:
            await self._delete(path)
        except RegistryError as exc:
            log.warning("registry %s: %s; will delete it after reconnecting", self.name, exc)
            self._stale.add(path)

    # -- subscriptions ----------------------------------------------------------------------------

    async def subscribe(self, sub: Subscription, listener: ProvidersListener) -> list[DubboURL]:
        path = providers_path(sub.interface)
        self._require_connected(f"subscribe to {sub.interface}")

        def make() -> _Watch[DubboURL]:
            return _Watch(path, interface=sub.interface, category=PROVIDERS, parse=_provider)

        return await self._watch_children(path, _Watch, make, (sub, listener))

    async def unsubscribe(self, sub: Subscription, listener: ProvidersListener) -> None:
        self._unbind(self._watches.get(providers_path(sub.interface)), (sub, listener))

    async def watch_overrides(self, interface: str, listener: ProvidersListener) -> list[DubboURL]:
        path = legacy_configurators_path(path_segment(interface, "interface"))
        self._require_connected(f"watch the override URLs of {interface}")

        def make() -> _Watch[DubboURL]:
            return _Watch(path, interface=interface, category=_OVERRIDES, parse=parse_override_url)

        return await self._watch_children(path, _Watch, make, (interface, listener))

    async def unwatch_overrides(self, interface: str, listener: ProvidersListener) -> None:
        path = legacy_configurators_path(path_segment(interface, "interface"))
        self._unbind(self._watches.get(path), (interface, listener))

    async def watch_instances(self, app: str, listener: InstancesListener) -> list[AppInstance]:
        path = instances_path(app)
        self._require_connected(f"watch the instances of {app}")

        def make() -> _InstancesWatch:
            return _InstancesWatch(path, interface=app, category=_INSTANCES)

        return await self._watch_children(path, _InstancesWatch, make, (app, listener))

    async def unwatch_instances(self, app: str, listener: InstancesListener) -> None:
        self._unbind(self._watches.get(instances_path(app)), (app, listener))

    async def _watch_children(
        self,
        path: str,
        kind: type[_Watch[Item]],
        make: Callable[[], _Watch[Item]],
        binding: _Binding[Item],
    ) -> list[Item]:
        """Bind ``binding`` to the children watch of ``path`` (``make`` sets it up on first use); the
        items now."""
        # Every call lists again: cheap, and the caller gets what ZooKeeper has now.
        w = await self._armed(path, kind, make, self._refresh, lambda w: not w.bindings)
        w.bindings.append(binding)
        return list(w.items)

    async def _armed(
        self,
        path: str,
        kind: type[W],
        make: Callable[[], W],
        read: Callable[[W], Awaitable[None]],
        unused: Callable[[W], bool],
    ) -> W:
        """The watch of ``path`` (made on first use), read now with the watch set.  A read that fails
        drops a watch no listener uses yet; one stopped meanwhile raises RegistryUnavailable."""
        found = self._watches.get(path)
        if found is None:
            found = make()
            found.watcher = self._make_watcher(found)
            self._watches[path] = found
        assert isinstance(found, kind)
        w = found
        w.pending += 1
        try:
            await read(w)
        except BaseException:
            if unused(w) and w.pending == 1:
                self._drop_watch(w)
            raise
        finally:
            w.pending -= 1
        if self._watches.get(path) is not w:  # stopped meanwhile
            raise RegistryUnavailable(f"registry {self.name}: the watch of {path} was cancelled")
        return w

    def _unbind(self, w: _Watched | None, binding: _Binding[Any]) -> None:
        if not isinstance(w, _Watch):
            return
        with contextlib.suppress(ValueError):
            w.bindings.remove(binding)  # the first equal one: a listener bound twice stays once
        if not w.bindings and not w.pending:
            self._drop_watch(w)

    def _drop_watch(self, w: _Watched) -> None:
        # kazoo cannot remove a server-side watch: it fires once more and is ignored.
        if self._watches.get(w.path) is w:
            del self._watches[w.path]
        if w.task is not None:
            w.task.cancel()

    def _make_watcher(self, w: _Watched) -> Callable[[WatchedEvent], None]:
        def watcher(event: WatchedEvent) -> None:  # on kazoo's callback thread
            # NONE events are kazoo dropping its watches on a disconnect; the reconnect re-reads.
            if event.type != EventType.NONE:
                self._to_loop(self._on_watch_event, w, event.path)

        return watcher

    def _on_watch_event(self, w: _Watched, path: str) -> None:
        if self._watches.get(w.path) is not w:
            return  # unwatched: a leftover one-shot watch
        w.note_event(path)
        if w.task is not None and not w.task.done():
            w.dirty = True  # coalesce: the running re-read reads once more
            return
        w.task = asyncio.ensure_future(self._reread_on_events(w))

    async def _reread_on_events(self, w: _Watched) -> None:
        while True:
            w.dirty = False
            try:
                await self._reread(w, on_event=True)
            except RegistryError as exc:
                self._last_error = str(exc)
                log.warning("registry %s: %s", self.name, exc)
                client = self._client
                if client is None or not client.connected:
                    return  # the reconnect re-reads (and re-arms) every watched path
                # Still connected (a timeout): the watch may not be armed; read again shortly.
                await asyncio.sleep(1.0)
                w.dirty = True
            if not w.dirty or self._watches.get(w.path) is not w:
                return

    async def _reread(self, w: _Watched, *, force: bool = False, on_event: bool = False) -> None:
        """Read ``w``'s path again with its watch set, and deliver what changed.

        ``force``: deliver a children list even if unchanged (a new session); ``on_event``: hold
        back a listing that lost children (see ``removal_hold_s``).
        """
        if isinstance(w, _RuleWatch):
            await self._read_rule_node(w)
        elif isinstance(w, _MappingWatch):
            await self._read_mapping_node(w)
        elif isinstance(w, _Watch):
            await self._refresh(w, force=force, hold_s=self._removal_hold_s if on_event else 0.0)

    async def _refresh(self, w: _Watch[Any], *, force: bool = False, hold_s: float = 0.0) -> None:
        """List ``w.path`` with the watch set; deliver the list when it changed (or ``force``).
        An instance watch reads (and watches) its leaves' data too, and compares the instances.

        ``hold_s``: when the listing lost children, wait that long and list again before delivering.
        """
        assert w.watcher is not None
        what = f"list {w.category}"
        async with w.lock:
            try:
                leaves = await self._op(what, w.path, lambda c: c.get_children_async(w.path, watch=w.watcher))
                if hold_s and w.leaves is not None and not w.leaves.issubset(leaves):
                    await asyncio.sleep(hold_s)
                    leaves = await self._op(
                        what, w.path, lambda c: c.get_children_async(w.path, watch=w.watcher)
                    )
            except NoNodeError:
                # A service nobody has registered yet (or its folder was removed): create the folder
                # so the watch can be set and fires when the first child comes (Dubbo's
                # ZookeeperRegistry.doSubscribe creates its category folders the same way).
                await self._ensure_path(w.path)
                try:
                    leaves = await self._op(
                        what, w.path, lambda c: c.get_children_async(w.path, watch=w.watcher)
                    )
                except NoNodeError:
                    raise RegistryError(
                        f"registry {self.name}: {w.path} was deleted as it was created"
                    ) from None
            current = frozenset(leaves)
            if isinstance(w, _InstancesWatch):
                fresh = await self._read_leaves(w, current)
                # A leaf deleted between the listing and its read is left out (its deletion fired).
                items = self._parse_leaves(w, sorted(current & w.data.keys()), fresh)
            elif current == w.leaves and not force:
                return
            else:
                items = self._parse_leaves(w, sorted(current))
            if current == w.leaves and items == w.items and not force:
                return
            w.leaves = current
            w.items = items
            if self._watches.get(w.path) is not w:
                return
            snapshot = w.items
            for _, listener in list(w.bindings):
                try:
                    listener(list(snapshot))
                except Exception:
                    log.exception("registry %s: listener of %s failed", self.name, w.path)

    def _parse_leaves(
        self, w: _Watch[Item], leaves: list[str], fresh: frozenset[str] = frozenset()
    ) -> list[Item]:
        """Items of ``leaves``; leaves of the last listing are not parsed again (unless their data was
        read again: ``fresh``), so an event costs in proportion to what changed, not to how many
        children the path has.  A leaf that does not parse is skipped, warned about and counted once
        (again if it parsed meanwhile: an instance's data can be fixed and broken again)."""
        items: list[Item] = []
        known: dict[str, Item] = w.parsed
        parsed: dict[str, Item] = {}
        for leaf in leaves:
            if leaf in known and leaf not in fresh:
                item = known[leaf]
            else:
                try:
                    item = w.parse_leaf(leaf)
                except ValueError as exc:
                    if leaf not in w.bad_leaves:
                        w.bad_leaves.add(leaf)
                        # Discovery counts these among its invalid providers.
                        if w.category in (PROVIDERS, _INSTANCES):
                            self.unparseable += 1
                        log.warning(
                            "registry %s: skipping unparseable %s/%s: %s", self.name, w.path, leaf, exc
                        )
                    continue
                w.bad_leaves.discard(leaf)
            items.append(item)
            parsed[leaf] = item
        w.bad_leaves.intersection_update(leaves)  # forget leaves that are gone
        w.parsed = parsed
        return items

    async def _read_leaves(self, w: _InstancesWatch, current: frozenset[str]) -> frozenset[str]:
        """Read, with the data watch set, the leaves of ``current`` that are new, whose data watch
        fired, or every one after a reconnect; the leaves read.  Leaves that failed are read again
        next time, and the first failure is raised once the others are in."""
        for gone in w.data.keys() - current:
            del w.data[gone]
        rearm, w.rearm = w.rearm, False
        stale, w.stale = w.stale, set()
        todo = sorted(leaf for leaf in current if rearm or leaf in stale or leaf not in w.data)
        watcher = w.watcher

        def read(leaf: str) -> Awaitable[Any]:
            path = f"{w.path}/{leaf}"
            return self._op("read instance", path, lambda c: c.get_async(path, watch=watcher))

        results = await asyncio.gather(*(read(leaf) for leaf in todo), return_exceptions=True)
        fresh: set[str] = set()
        failure: BaseException | None = None
        for leaf, result in zip(todo, results, strict=True):
            if isinstance(result, NoNodeError):
                w.data.pop(leaf, None)  # deleted since the listing: the children watch fired
            elif isinstance(result, BaseException):
                w.stale.add(leaf)
                failure = failure or result
            else:
                w.data[leaf] = result[0] or b""
                fresh.add(leaf)
        if failure is not None:
            w.stale |= fresh  # read, but not parsed: the next read parses them
            raise failure
        return frozenset(fresh)

    # -- dynamic rules (the config center) --------------------------------------------------------

    async def watch_rule(self, rule_id: str, listener: RuleListener) -> None:
        path = zk_rule_path(path_segment(rule_id, "rule id"))
        self._require_connected(f"watch rule {rule_id}")
        # Read again: what changed is delivered to the listeners there are, and the new one gets
        # what ZooKeeper has now.
        w = await self._armed(
            path,
            _RuleWatch,
            lambda: _RuleWatch(path, rule_id=rule_id),
            self._read_rule_node,
            lambda w: not w.listeners,
        )
        w.listeners.append(listener)
        self._deliver_rule(w, [listener])

    async def unwatch_rule(self, rule_id: str, listener: RuleListener) -> None:
        w = self._watches.get(zk_rule_path(path_segment(rule_id, "rule id")))
        if not isinstance(w, _RuleWatch):
            return
        with contextlib.suppress(ValueError):
            w.listeners.remove(listener)
        if not w.listeners and not w.pending:
            self._drop_watch(w)

    async def read_rule(self, rule_id: str) -> tuple[str | None, str, str]:
        path = zk_rule_path(path_segment(rule_id, "rule id"))
        self._require_connected(f"read rule {rule_id}")
        text, version = await self._get_text(path, None)
        return text, path, version

    async def write_rule(self, rule_id: str, text: str) -> str:
        path = zk_rule_path(path_segment(rule_id, "rule id"))
        self._require_connected(f"write rule {rule_id}")
        data = text.encode()
        for _ in range(3):
            try:
                # Persistent, with the ACL of the other persistent nodes we create.
                await self._op("write rule", path, lambda c: c.create_async(path, data, acl=self._parent_acl))
                return path
            except NoNodeError:
                await self._ensure_path(_parent(path))
                continue
            except NodeExistsError:
                pass
            try:
                await self._op("write rule", path, lambda c: c.set_async(path, data))
                return path
            except NoNodeError:
                continue  # deleted meanwhile: create it
        raise RegistryError(f"registry {self.name}: cannot write {path}: it keeps being deleted and created")

    async def delete_rule(self, rule_id: str) -> bool:
        path = zk_rule_path(path_segment(rule_id, "rule id"))
        self._require_connected(f"delete rule {rule_id}")
        try:
            await self._op("delete rule", path, lambda c: c.delete_async(path))
        except NoNodeError:
            return False
        return True

    async def _read_rule_node(self, w: _RuleWatch) -> None:
        """Read the rule with its watch set; deliver it when (text, version) changed."""
        assert w.watcher is not None
        async with w.lock:
            content = await self._get_text(w.path, w.watcher)
            if content == w.content:
                return
            w.content = content
            if self._watches.get(w.path) is w:
                self._deliver_rule(w, list(w.listeners))

    def _deliver_rule(self, w: _RuleWatch, listeners: list[RuleListener]) -> None:
        assert w.content is not None
        text, version = w.content
        for listener in listeners:
            try:
                listener(w.rule_id, text, w.path, version)
            except Exception:
                log.exception("registry %s: rule listener of %s failed", self.name, w.rule_id)

    async def _get_text(
        self, path: str, watch: Callable[[WatchedEvent], None] | None, what: str = "rule"
    ) -> tuple[str | None, str]:
        """(text, mzxid) of the node at ``path`` (a rule, a mapping: ``what``), (None, "") when there
        is none.

        With ``watch``, it is set on the node: a data watch while it exists, an exists watch while
        it does not, so that its creation fires it too.
        """
        for _ in range(3):
            try:
                data, stat = await self._op(f"read {what}", path, lambda c: c.get_async(path, watch=watch))
            except NoNodeError:
                if watch is None:
                    return None, ""
            else:
                # As Curator5ZookeeperClient's NodeCacheListenerImpl: new String(data, UTF_8), which
                # replaces what is not UTF-8 (the rule's parser then says what is wrong with it).
                return (data or b"").decode(errors="replace"), str(stat.mzxid)
            stat = await self._op(f"watch {what}", path, lambda c: c.exists_async(path, watch=watch))
            if stat is None:
                return None, ""
            # Created between the two requests: read it (the exists watch is a data watch now).
        raise RegistryError(f"registry {self.name}: cannot read {path}: it keeps being created and deleted")

    # -- application-level discovery: the service-name mapping, the metadata report ---------------

    async def watch_mapping(self, interface: str, listener: MappingListener) -> tuple[str, ...]:
        path = mapping_path(interface)
        self._require_connected(f"watch the mapping of {interface}")
        w = await self._armed(
            path,
            _MappingWatch,
            lambda: _MappingWatch(path, interface=interface),
            self._read_mapping_node,
            lambda w: not w.listeners,
        )
        w.listeners.append(listener)
        return w.apps or ()

    async def unwatch_mapping(self, interface: str, listener: MappingListener) -> None:
        w = self._watches.get(mapping_path(interface))
        if not isinstance(w, _MappingWatch):
            return
        with contextlib.suppress(ValueError):
            w.listeners.remove(listener)
        if not w.listeners and not w.pending:
            self._drop_watch(w)

    async def _read_mapping_node(self, w: _MappingWatch) -> None:
        """Read the mapping with its watch set (an exists watch while there is none); deliver the
        applications when they changed.  A deleted node changes nothing: Dubbo's
        ``ZookeeperMetadataReport.MappingDataListener`` hears NodeCreated and NodeDataChanged only."""
        assert w.watcher is not None
        async with w.lock:
            text, _version = await self._get_text(w.path, w.watcher, "mapping")
            if text is None:
                if w.apps is None:
                    w.apps = ()
                return
            # Curator5ZookeeperClient.doGetContent: empty data is no content, i.e. no application.
            apps = mapping_apps(text)
            if apps == w.apps:
                return
            first, w.apps = w.apps is None, apps
            if first or self._watches.get(w.path) is not w:
                return
            for listener in list(w.listeners):
                try:
                    listener(apps)
                except Exception:
                    log.exception("registry %s: mapping listener of %s failed", self.name, w.interface)

    async def add_mapping(self, interface: str, app: str) -> None:
        path = mapping_path(interface)
        mapping_with(None, app)  # an application name a mapping cannot hold: ValueError before any request
        self._require_connected(f"map {interface} to {app}")
        # MetadataServiceNameMapping.map: read the content and its stat, add the application, write
        # with the stat's version as ticket (ZookeeperMetadataReport.registerServiceAppMapping;
        # Curator5ZookeeperClient.createOrUpdatePersistent: a create when there is no node), and
        # when another writer came first, wait a random while and try again.
        for attempt in range(_CAS_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0.0, _CAS_WAIT_S))
            try:
                if await self._map_once(path, app):
                    return
            except (NodeExistsError, BadVersionError, NoNodeError):
                log.debug("registry %s: %s changed while adding %s; trying again", self.name, path, app)
        raise RegistryError(
            f"registry {self.name}: cannot add {app} to {path}: other writers changed it "
            f"{_CAS_ATTEMPTS} times in a row"
        )

    async def _map_once(self, path: str, app: str) -> bool:
        """One compare-and-set of the mapping at ``path``; False when only its parent was missing.
        NodeExistsError, BadVersionError, NoNodeError: another writer changed it since it was read."""
        try:
            data, stat = await self._op("read mapping", path, lambda c: c.get_async(path))
        except NoNodeError:
            content, version = None, None
        else:
            # Curator5ZookeeperClient.doGetConfigItem: new String(data, UTF_8); empty is no content.
            content, version = (data or b"").decode(errors="replace") or None, stat.version
        updated = mapping_with(content, app)
        if updated == content:
            return True  # there already: Dubbo writes nothing
        value = updated.encode()
        if version is not None:
            await self._set_version(path, value, version, "update mapping")
            return True
        try:
            # Persistent, with the ACL of the other persistent nodes we create.
            await self._op(
                "create mapping", path, lambda c: c.create_async(path, value, acl=self._parent_acl)
            )
        except NoNodeError:
            await self._ensure_path(_parent(path))
            return False
        return True

    async def read_metadata(self, app: str, revision: str) -> MetadataInfo | None:
        path = metadata_path(app, revision)
        self._require_connected(f"read the metadata of {app} revision {revision}")
        try:
            data, _stat = await self._op("read metadata", path, lambda c: c.get_async(path))
        except NoNodeError:
            return None
        if not (data or b"").strip():
            return None  # Curator5ZookeeperClient.doGetContent: empty data is no content
        try:
            return parse_json(data)
        except ValueError as exc:
            raise RegistryError(f"registry {self.name}: {path} holds no MetadataInfo: {exc}") from None

    async def write_metadata(self, info: MetadataInfo) -> None:
        if not info.app or not info.revision:
            raise ValueError(f"a MetadataInfo needs an application and a revision to be written: {info!r}")
        path = metadata_path(info.app, info.revision)
        self._require_connected(f"write the metadata of {info.app} revision {info.revision}")
        value = dump_json(info).encode()
        for _ in range(3):
            try:
                # Persistent, with the ACL of the other persistent nodes we create.
                await self._op(
                    "write metadata", path, lambda c: c.create_async(path, value, acl=self._parent_acl)
                )
                return
            except NoNodeError:
                await self._ensure_path(_parent(path))
                continue
            except NodeExistsError:
                pass
            # ZookeeperMetadataReport.publishAppMetadata writes only where there is no content: a
            # revision is the hash of its MetadataInfo, so what is there already says the same.
            try:
                data, stat = await self._op("read metadata", path, lambda c: c.get_async(path))
                if (data or b"").strip():
                    return
                await self._set_version(path, value, stat.version)
                return
            except (NoNodeError, BadVersionError):
                continue  # deleted or written meanwhile: look again
        raise RegistryError(f"registry {self.name}: cannot write {path}: it keeps being deleted and created")

    async def _set_version(self, path: str, value: bytes, version: int, what: str = "write metadata") -> None:
        """Replace the data at ``path`` if its version is still ``version`` (BadVersionError if not)."""
        await self._op(what, path, lambda c: c.set_async(path, value, version=version))

    # -- connection state -------------------------------------------------------------------------

    def _kazoo_state_listener(self, state: str) -> None:  # on kazoo's connection thread: never block
        self._to_loop(self._on_kazoo_state, state)

    def _kazoo_logged(self, level: int, msg: str, args: tuple[Any, ...]) -> None:  # on a kazoo thread
        if level >= logging.WARNING and msg.startswith(_KAZOO_CONNECT_FAILED):
            try:
                why = msg % args
            except (TypeError, ValueError):
                why = msg
            # Before the SUSPENDED event this same failure causes: the unreachable line gets its cause.
            self._to_loop(self._connect_failed, why)

    def _connect_failed(self, why: str) -> None:
        if self._stopping:
            return
        self.connect_error = why
        self._failed_attempts += 1
        if self._state == CONNECTING and self._failed_attempts >= len(self.url.hosts):
            # Never connected yet, and every member refused once: no state event says it, we do.
            self._went_unreachable(why)

    def _on_kazoo_state(self, state: str) -> None:
        if self._stopping:
            return
        self._state_changes += 1
        # Whatever happened, a recovery still running was for a connection that is gone.
        if self._recovery is not None:
            self._recovery.cancel()
            self._recovery = None
        if state == KazooState.CONNECTED:
            self._failed_attempts = 0
            self.auth_error = ""  # checked again by the recovery
            self._recovery = asyncio.ensure_future(self._recover(new_session=self._session_lost))
        elif state == KazooState.SUSPENDED:
            self._set_state(SUSPENDED)
        elif state == KazooState.LOST:
            self._session_lost = True
            self._set_state(LOST)

    async def _recover(self, *, new_session: bool) -> None:
        """Bring ZooKeeper back in line with what we own and watch, then report "connected"."""
        changes = self._state_changes
        kind = "new session" if new_session else "same session" if self._ever_connected else "first session"
        log.info(
            "registry %s: connected (%s 0x%x): %d nodes to check, %d watched paths to read again",
            self.name,
            kind,
            self.session_id or 0,
            len(self._registered),
            len(self._watches),
        )
        if self._digest_id is not None:
            try:
                await self._check_credentials(ROOT)
            except _AuthMismatch as exc:
                self._auth_failed(str(exc))
                self._recovery = None
                return
            except RegistryError as exc:
                log.warning("registry %s: could not check credentials: %s", self.name, exc)
        for w in self._watches.values():
            if isinstance(w, _InstancesWatch):
                w.rearm = True  # kazoo dropped the data watches of its leaves too
        steps: list[Callable[[], Awaitable[None]]] = [
            *(
                functools.partial(self._create_ephemeral, p, _node_data(n))
                for p, n in self._registered.items()
            ),
            *(functools.partial(self._delete_stale, p) for p in list(self._stale)),
            *(functools.partial(self._reread, w, force=new_session) for w in list(self._watches.values())),
        ]
        for attempt in range(_RECOVERY_ATTEMPTS):
            results = await asyncio.gather(*(step() for step in steps), return_exceptions=True)
            failed = [
                (step, r) for step, r in zip(steps, results, strict=True) if isinstance(r, BaseException)
            ]
            for _, exc in failed:
                log.warning("registry %s: recovery step failed: %s", self.name, exc)
            client = self._client
            if changes != self._state_changes or client is None or not client.connected:
                return  # disconnected again meanwhile: the next CONNECTED recovers
            # Still connected: a timeout is worth another try; a refusal (e.g. NoAuth) is not.
            steps = [step for step, exc in failed if isinstance(exc, RegistryUnavailable)]
            if failed:
                self._last_error = str(failed[0][1])
            if not steps or attempt == _RECOVERY_ATTEMPTS - 1:
                break
            await asyncio.sleep(0.5)
        if self._state == AUTH_FAILED:
            self._recovery = None
            return  # a step found our password wrong: stay not ready
        # Nodes are re-created, watches re-armed: the new session is fully ours now.  (What still
        # failed is logged and shown by describe().)
        self._session_lost = False
        self._ever_connected = True
        self._recovery = None
        self._set_state(CONNECTED)

    async def _check_credentials(self, path: str) -> None:
        """Raise _AuthMismatch when ``path``'s ACL grants our digest user a different password.

        Nothing to compare (no node, no digest entry for our user): nothing is raised.
        """
        assert self._digest_id is not None
        try:
            acls, _stat = await self._op(_READ_ACL, path, lambda c: c.get_acls_async(path))
        except NoNodeError:
            return
        user = self._digest_id.split(":", 1)[0]
        ours = [a.id.id for a in acls if a.id.scheme == "digest" and a.id.id.split(":", 1)[0] == user]
        if ours and self._digest_id not in ours:
            raise _AuthMismatch(
                f"registry {self.name}: ZooKeeper digest auth failed: the password for user {user!r} "
                f"does not match the one {path} was created with (its ACL holds another digest)"
            )

    def _auth_failed(self, message: str) -> None:
        self.auth_error = message
        self._last_error = message
        log.error("%s; not ready until restarted with the right password", message)
        self._set_state(AUTH_FAILED)

    async def _delete_stale(self, path: str) -> None:
        if path in self._registered:
            self._stale.discard(path)
            return
        await self._delete(path)
        self._stale.discard(path)

    # -- node operations --------------------------------------------------------------------------

    async def _create_ephemeral(self, path: str, data: bytes = b"") -> None:
        """Create our ephemeral node at ``path`` holding ``data`` (parents persistent).

        A node already there that our session owns is fine (a retried create, a same-session
        reconnect); when it holds other data (an instance of an earlier revision) the data is
        replaced, as Curator's ``ServiceDiscoveryImpl.updateService`` does.  One owned by another
        session (ours before an expiry, not yet reaped) is deleted and created again, as Dubbo does.
        """
        for _ in range(3):
            try:
                await self._op(
                    "create",
                    path,
                    lambda c: c.create_async(path, data, acl=self._leaf_acl, ephemeral=True),
                )
                return
            except NoNodeError:
                await self._ensure_path(_parent(path))
                continue
            except NodeExistsError:
                pass
            try:
                found, stat = await self._op("check", path, lambda c: c.get_async(path))
            except NoNodeError:
                continue  # removed meanwhile: create again
            if stat.ephemeralOwner and stat.ephemeralOwner == self.session_id:
                if (found or b"") != data:
                    try:
                        await self._op("update", path, lambda c: c.set_async(path, data))
                    except NoNodeError:
                        continue
                return
            log.info(
                "registry %s: %s exists (owner 0x%x): deleting and creating it again",
                self.name,
                path,
                stat.ephemeralOwner,
            )
            await self._delete(path)
        raise RegistryError(
            f"registry {self.name}: cannot create {path}: it keeps being re-created by others"
        )

    async def _ensure_path(self, path: str) -> None:
        """Create ``path`` and its missing parents as persistent nodes with the parents' ACL."""
        with contextlib.suppress(NodeExistsError):
            await self._op("create", path, lambda c: c.ensure_path_async(path, acl=self._parent_acl))

    async def _delete(self, path: str, client: KazooClient | None = None) -> None:
        with contextlib.suppress(NoNodeError):
            await self._op("delete", path, lambda c: c.delete_async(path), client=client)

    async def _op(
        self,
        what: str,
        path: str,
        call: Callable[[KazooClient], Any],
        *,
        client: KazooClient | None = None,
    ) -> Any:
        """Run one kazoo ``*_async`` request and await its result, bounded by ``op_timeout_s``.

        NoNodeError and NodeExistsError pass through for the caller to handle; a refusal for want of
        rights is explained (``_refused``); other errors are mapped by ``Registry._call``.
        """
        client = client or self._client
        if client is None:
            raise RegistryUnavailable(f"registry {self.name} is {self._state}: cannot {what} {path}")
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[Any] = loop.create_future()

        def completed(result: Any) -> None:  # on kazoo's completion thread
            self._to_loop(_settle, fut, result)

        try:
            call(client).rawlink(completed)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"registry {self.name}: cannot {what} {path}: {exc}") from exc
        try:
            return await self._call(f"{what} {path}", fut, passthrough=_PASSED_THROUGH)
        except (NoAuthError, AuthFailedError) as exc:
            raise await self._refused(what, path, exc) from exc

    def _unreachable(self, exc: Exception) -> str | None:
        return f"connection lost ({type(exc).__name__})" if isinstance(exc, _UNAVAILABLE) else None

    async def _refused(self, what: str, path: str, exc: KazooException) -> RegistryError:
        """The error for a request ZooKeeper refused for want of rights, saying why if we can tell."""
        user = self.url.username
        if self._digest_id is not None and what == _READ_ACL:
            # Reading an ACL needs READ or ADMIN: not even that (a "private" tree) is as clear a
            # sign of a wrong password as we can get.  Never checked further up: no recursion.
            return _AuthMismatch(
                f"registry {self.name}: ZooKeeper digest auth failed: user {user!r} may not read {path} "
                "(wrong password, or an ACL that does not grant this user)"
            )
        if self._digest_id is not None and isinstance(exc, NoAuthError):
            try:
                await self._check_credentials(_parent(path) or "/")
            except _AuthMismatch as mismatch:
                self._auth_failed(str(mismatch))
                return mismatch
            except RegistryError:
                pass
        who = f"digest user {user!r}" if user else "no credentials (add ?username=...&password=...)"
        return RegistryError(
            f"registry {self.name}: {what} {path}: ZooKeeper refused it ({type(exc).__name__}, "
            f"authenticated as {who}): the ACL there does not grant it"
        )

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Hand a call from a kazoo thread to the event loop (dropped once the loop is closed)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(fn, *args)


def _node_data(node: DubboURL | AppInstance) -> bytes:
    """What our node for ``node`` holds: nothing for a URL (its name says it all), Curator's JSON
    for an instance (regproxy.registry.instances.to_curator)."""
    return to_curator(node) if isinstance(node, AppInstance) else b""


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if fut.done():  # timed out (cancelled) already
        return
    exc = result.exception
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result.value)


def _close_client(client: KazooClient) -> None:
    try:
        client.stop()
    finally:
        client.close()
