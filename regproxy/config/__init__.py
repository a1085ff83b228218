"""The sidecar's configuration, as a package of small parts:

* ``model``: the whole file as one frozen, validated model (``Config``) and its plain sections;
* ``routes``: static clusters and route rules; ``health``: the health section;
* ``fields``: the value types the sections share; ``errors``: ``key.path: problem`` reporting;
* ``load``: reading the YAML file and applying command-line overrides.

Host:port parsing is ``regproxy.address``; registry URLs are ``regproxy.registry.registry_url``;
compiling routes for the data path is ``regproxy.routing.from_config``.
"""

from __future__ import annotations

from regproxy.config.errors import ConfigError
from regproxy.config.fields import MAX_WEIGHT
from regproxy.config.health import ActiveSettings, AppCheckSettings, HealthSettings, OutlierSettings
from regproxy.config.load import load_config
from regproxy.config.model import (
    LOG_LEVELS,
    Config,
    DiscoveryConfig,
    DrainConfig,
    LimitsConfig,
    TimeoutsConfig,
    TLSConfig,
    UpstreamConfig,
)
from regproxy.config.routes import LB_NAMES, ClusterConfig, HostConfig, RouteConfig, RouteMatchConfig

__all__ = [
    "LB_NAMES",
    "LOG_LEVELS",
    "MAX_WEIGHT",
    "ActiveSettings",
    "AppCheckSettings",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "DrainConfig",
    "HealthSettings",
    "HostConfig",
    "LimitsConfig",
    "OutlierSettings",
    "RouteConfig",
    "RouteMatchConfig",
    "TLSConfig",
    "TimeoutsConfig",
    "UpstreamConfig",
    "load_config",
]
