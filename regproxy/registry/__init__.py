"""Registries: one adapter per registry behind one interface (base.Registry), and the Dubbo URL model."""

from __future__ import annotations

from .base import (
    CONNECTED,
    CONNECTING,
    LOST,
    STOPPED,
    SUSPENDED,
    ProvidersListener,
    Registry,
    RegistryError,
    RegistryUnavailable,
    StateListener,
)
from .memory import MemoryRegistry
from .url import (
    ANY,
    DUBBO_PROTOCOL_VERSION,
    FORBIDDEN_PROVIDER_PARAMS,
    DubboURL,
    Subscription,
    consumer_url,
    java_url_decode,
    java_url_encode,
    matches,
    provider_url,
    regproxy_release,
)

__all__ = [
    "ANY",
    "CONNECTED",
    "CONNECTING",
    "DUBBO_PROTOCOL_VERSION",
    "FORBIDDEN_PROVIDER_PARAMS",
    "LOST",
    "STOPPED",
    "SUSPENDED",
    "DubboURL",
    "MemoryRegistry",
    "ProvidersListener",
    "Registry",
    "RegistryError",
    "RegistryUnavailable",
    "StateListener",
    "Subscription",
    "consumer_url",
    "java_url_decode",
    "java_url_encode",
    "matches",
    "provider_url",
    "regproxy_release",
]
