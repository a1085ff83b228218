"""Registry adapters by URL scheme."""

from __future__ import annotations

from regproxy.registry.base import Registry, RegistryError
from regproxy.registry.registry_url import RegistryURL


def make_registry(url: RegistryURL) -> Registry:
    # Adapters are imported on demand: kazoo is only loaded by sidecars that use ZooKeeper.
    if url.scheme == "zookeeper":
        from regproxy.registry.zookeeper import ZooKeeperRegistry

        return ZooKeeperRegistry(url)
    if url.scheme == "nacos":
        from regproxy.registry.nacos import NacosRegistry

        return NacosRegistry(url)
    if url.scheme == "memory":
        from regproxy.registry.memory import MemoryRegistry

        return MemoryRegistry(url)
    raise RegistryError(f"registry {url}: the {url.scheme} adapter is not available in this build")
