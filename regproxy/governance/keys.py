"""Where Dubbo's dynamic rules live: their keys, and the ZooKeeper paths and Nacos dataIds that hold them.

Facts from apache/dubbo 3.3 (the same in 2.7):

* A service's rule key is ``URL.getColonSeparatedKey`` (``DynamicConfiguration.getRuleKey``):
  ``interface:version:group`` where a blank version or group still leaves its colon, so a service
  without either is ``com.foo.Svc::``.  Dubbo Admin writes the same (``ConvertUtil.getIdFromDTO``).
  An application's key is its name.
* The rule kinds are suffixes of the key: ``.condition-router`` (``ListenableStateRouter.RULE_SUFFIX``),
  ``.tag-router`` (``TagStateRouter``), ``.configurators`` (``registry.Constants.CONFIGURATORS_SUFFIX``).
* Group ``dubbo`` (``DynamicConfiguration.DEFAULT_GROUP``).  ZooKeeper (``TreePathDynamicConfiguration``):
  root ``/`` + namespace ``dubbo`` + base path ``/config``, then ``/<group>/<key><suffix>``.  Nacos:
  dataId ``<key><suffix>`` in that group.
* 2.6-era override URLs are nodes under ``/dubbo/<interface>/configurators``
  (``ZookeeperRegistry``'s category path).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONDITION_ROUTER",
    "CONFIGURATORS",
    "RULE_GROUP",
    "SUFFIXES",
    "TAG_ROUTER",
    "ZK_CONFIG_ROOT",
    "legacy_configurators_path",
    "service_rule_key",
    "split_rule_id",
    "zk_rule_path",
]

CONDITION_ROUTER: Final = ".condition-router"
TAG_ROUTER: Final = ".tag-router"
CONFIGURATORS: Final = ".configurators"
SUFFIXES: Final = (CONDITION_ROUTER, TAG_ROUTER, CONFIGURATORS)
RULE_GROUP: Final = "dubbo"
ZK_CONFIG_ROOT: Final = "/dubbo/config"


def service_rule_key(interface: str, version: str = "", group: str = "") -> str:
    """``URL.getColonSeparatedKey``: blank parts keep their colon (``com.foo.Svc::``)."""
    return f"{interface}:{version.strip()}:{group.strip()}"


def zk_rule_path(rule_id: str, group: str = RULE_GROUP) -> str:
    """The ZooKeeper node of a rule id (``<key><suffix>``)."""
    return f"{ZK_CONFIG_ROOT}/{group}/{rule_id}"


def legacy_configurators_path(interface: str) -> str:
    """Where 2.6-era ``override://`` URLs are written for an interface."""
    return f"/dubbo/{interface}/configurators"


def split_rule_id(rule_id: str) -> tuple[str, str]:
    """``com.foo.Svc::.tag-router`` → (``com.foo.Svc::``, ``.tag-router``); ValueError if it has no
    known suffix or an empty key."""
    for suffix in SUFFIXES:
        if rule_id.endswith(suffix) and len(rule_id) > len(suffix):
            return rule_id[: -len(suffix)], suffix
    raise ValueError(f"{rule_id!r} is not <key> followed by one of {', '.join(SUFFIXES)}")
