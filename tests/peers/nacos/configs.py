"""The config state of the Nacos double: stored configs and who listens to which; no sockets, no loop.

Nacos 2.x's config module (com.alibaba.nacos.config.server), reduced to what its gRPC clients see:

* a config is identified by tenant (namespace id), group and dataId.  The query, publish and remove
  handlers pass the tenant through ``NamespaceUtil.processNamespaceParameter``, which in 2.x turns
  "", "public" and "null" into "" (3.x turns them into "public"): ``tenant_of``;
* its md5 is the hex MD5 of the UTF-8 content; a config that does not exist has md5 "" (Nacos's
  ``Constants.NULL``), which is also what the clients compute for empty content;
* a publish or remove that changes the md5 is a change (``ConfigCacheService.dumpWithMd5`` /
  ``remove`` publish a ``LocalDataChangeEvent``); publishing the same content again changes only the
  timestamp and notifies no one;
* ``ConfigChangeBatchListenRequestHandler`` keys a listen by the dataId, group and tenant **as the
  client sent them** (``GroupKey2.getKey``, no namespace processing in 2.x), remembers it for the
  connection, and answers at once whether the md5 the client holds differs from the server's;
  ``RpcConfigChangeNotifier`` then pushes every later change of that key to every connection
  listening to it, whatever md5 it sent.  So in 2.x a client configured with namespace "public"
  reads and writes the default namespace but listens to a key no change ever reaches;
* a connection's listens go with the connection (``ConfigConnectionEventListener``); configs stay
  (Nacos keeps them in its database), also across a restart.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from tests.peers.nacos.model import (
    GROUP_PATTERN,
    INVALID_PARAM,
    NAMESPACE_PATTERN,
    SERVER_ERROR,
    Failed,
    check_param,
)

ConfigKey = tuple[str, str, str]
"""(tenant, group, dataId); the default namespace's tenant is "" (Nacos 2.x)."""

# com.alibaba.nacos.api.config.remote.response.ConfigQueryResponse
CONFIG_NOT_FOUND = 300
# ParamCheckRule: what the parameter checker allows in a dataId, and how long
_DATA_ID = re.compile(r"[a-zA-Z0-9_:.\-]*")
DATA_ID_LIMIT = 256
# PropertyUtil.maxContent: nacos.config.max.content (10 MiB by default)
MAX_CONTENT = 10 * 1024 * 1024
# com.alibaba.nacos.api.config.ConfigType; a publish with another type (the SDKs send "") is stored as text
CONFIG_TYPES = frozenset({"properties", "xml", "json", "text", "html", "yaml", "toml", "unset"})
DEFAULT_TYPE = "text"


def md5_of(content: str) -> str:
    """Nacos's ``MD5Utils.md5Hex(content, "UTF-8")``: lowercase hex."""
    return hashlib.md5(content.encode()).hexdigest()


def tenant_of(namespace: str) -> str:
    """``NamespaceUtil.processNamespaceParameter`` as in Nacos 2.x."""
    if not namespace.strip() or namespace.lower() in ("public", "null"):
        return ""
    return namespace.strip()


def check_names(data_id: str, group: str, tenant: str) -> None:
    """The parameter checker (``ConfigRequestParamExtractor``): blank values pass, errorCode 400."""
    if tenant:
        check_param("namespaceId/tenant", tenant, NAMESPACE_PATTERN, 64)
    if data_id:
        check_param("dataId", data_id, _DATA_ID, DATA_ID_LIMIT)
    if group:
        check_param("group", group, GROUP_PATTERN, 128)


def check_write(data_id: str, group: str, content: str | None) -> None:
    """``ParamUtils.checkParam`` of the publish (content given) and remove (None) handlers."""
    if not data_id.strip():
        raise Failed(f"invalid dataId : {data_id}", INVALID_PARAM)
    if not group.strip():
        raise Failed(f"invalid group : {group}", INVALID_PARAM)
    if content is None:
        return
    if not content.strip():
        raise Failed(f"content is blank : {content}", INVALID_PARAM)
    if len(content) > MAX_CONTENT:
        raise Failed(f"invalid content, over {MAX_CONTENT}", INVALID_PARAM)


@dataclass(frozen=True)
class Config:
    """One stored config (the formal one: the double has no beta or tag grays)."""

    content: str
    md5: str
    type: str = DEFAULT_TYPE
    last_modified: int = 0  # milliseconds since the epoch
    encrypted_data_key: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The fields of a successful ``ConfigQueryResponse`` (Jackson names ``isBeta`` "beta")."""
        return {
            "content": self.content,
            "encryptedDataKey": self.encrypted_data_key,
            "contentType": self.type,
            "md5": self.md5,
            "lastModified": self.last_modified,
            "beta": False,
        }


class ConfigStore:
    """Configs by key, and for each key the connections listening and the md5 each last sent."""

    def __init__(self) -> None:
        self._configs: dict[ConfigKey, Config] = {}
        self._listeners: dict[ConfigKey, dict[str, str]] = {}
        self._last_modified = 0

    # -- configs ----------------------------------------------------------------------------------

    def get(self, key: ConfigKey) -> Config | None:
        return self._configs.get(key)

    def md5(self, key: ConfigKey) -> str:
        config = self._configs.get(key)
        return config.md5 if config is not None else ""

    def all(self) -> dict[ConfigKey, Config]:
        return dict(self._configs)

    def publish(
        self,
        key: ConfigKey,
        content: str,
        *,
        type: str = DEFAULT_TYPE,
        cas_md5: str = "",
        encrypted_data_key: str = "",
    ) -> bool:
        """Store ``content`` under ``key``; True if that changed its md5 (listeners are to be told).

        ``cas_md5`` (compare and set): when given, an existing config is replaced only if its md5 is
        that one (a missing config is created), as ``insertOrUpdateCas`` does.
        """
        old = self._configs.get(key)
        if cas_md5 and old is not None and old.md5 != cas_md5:
            raise Failed("Cas publish fail, server md5 may have changed.", SERVER_ERROR)
        new = Config(
            content=content,
            md5=md5_of(content),
            type=type if type in CONFIG_TYPES else DEFAULT_TYPE,
            last_modified=self._next_modified(),
            encrypted_data_key=encrypted_data_key,
        )
        self._configs[key] = new
        return old is None or old.md5 != new.md5

    def remove(self, key: ConfigKey) -> bool:
        """Forget the config; True if there was one (Nacos answers success either way)."""
        return self._configs.pop(key, None) is not None

    def _next_modified(self) -> int:
        self._last_modified = max(int(time.time() * 1000), self._last_modified + 1)
        return self._last_modified

    # -- listens ------------------------------------------------------------------------------------

    def listen(self, owner: str, key: ConfigKey, md5: str) -> bool:
        """Remember that connection ``owner`` listens to ``key`` holding ``md5``; True if up to date."""
        self._listeners.setdefault(key, {})[owner] = md5
        return md5 == self.md5(key)

    def unlisten(self, owner: str, key: ConfigKey) -> None:
        self._listeners.get(key, {}).pop(owner, None)

    def drop_owner(self, owner: str) -> None:
        for listeners in self._listeners.values():
            listeners.pop(owner, None)

    def listeners(self, key: ConfigKey) -> dict[str, str]:
        """Connection id -> the md5 it listened with."""
        return dict(self._listeners.get(key, {}))
