"""Wires the parts together and owns the lifecycle: start, run until a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from regproxy.api.http import build_app, start_api, stop_api
from regproxy.config import Config
from regproxy.discovery import Discovery, ingress_table
from regproxy.netutil import detect_advertise_ip
from regproxy.proxy.engine import Listener, ListenerSettings
from regproxy.registry.base import RegistryError
from regproxy.registry.factory import make_registry
from regproxy.routing import TableHolder
from regproxy.state import StateStore

log = logging.getLogger("regproxy")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.static_table = config.to_routing_table()
        self.egress_table = TableHolder(self.static_table)
        self.ingress_table = TableHolder(ingress_table(config.app_port))
        self.advertise_ip = config.advertise_ip or detect_advertise_ip()
        self.egress = Listener(
            "egress", self._settings(config.egress.host, config.egress.port), self.egress_table
        )
        self.ingress = Listener(
            "ingress", self._settings(config.ingress.host, config.ingress.port), self.ingress_table
        )
        self._stopped = asyncio.Event()
        self.discovery: Discovery | None = None
        self._api: web.AppRunner | None = None

    def _settings(self, host: str, port: int) -> ListenerSettings:
        c = self.config
        return ListenerSettings(
            host=host,
            port=port,
            max_body=c.limits.max_body_bytes,
            default_timeout_ms=c.timeouts.default_ms,
            connect_timeout_ms=c.timeouts.connect_ms,
            connections_per_host=c.upstream.connections_per_host,
            max_connections=c.limits.max_connections,
            idle_timeout_s=c.limits.idle_timeout_s,
        )

    async def start(self) -> None:
        c = self.config
        await self.ingress.start()
        try:
            await self.egress.start()
            # The port other sidecars must dial: the bound one (a config may ask for port 0).
            ingress_port = self.ingress.address[1]
            self.discovery = Discovery(
                registry_urls=c.registries,
                factory=make_registry,
                egress=self.egress_table,
                ingress=self.ingress_table,
                static_table=self.static_table,
                advertise_ip=self.advertise_ip,
                ingress_port=ingress_port,
                app_port=c.app_port,
                store=StateStore(c.data_dir),
            )
            await self.discovery.start()
            app = build_app(self.discovery, app_port=c.app_port, registries=c.registries)
            try:
                self._api = await start_api(app, c.api.host, c.api.port)
            except OSError as exc:
                raise OSError(exc.errno, f"api: cannot listen on {c.api}: {exc.strerror}") from exc
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._api is not None:
            await stop_api(self._api)
            self._api = None
        await self.egress.stop()
        await self.ingress.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        self._stopped.set()

    def request_stop(self) -> None:
        self._stopped.set()

    async def run_until_stopped(self) -> None:
        await self._stopped.wait()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _main(config: Config) -> int:
    sidecar = Sidecar(config)
    try:
        await sidecar.start()
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        return 1
    except RegistryError as exc:
        log.error("%s", exc)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sidecar.request_stop)
    log.info(
        "regproxy running (egress %s, ingress %s, api %s, advertise ip %s)",
        config.egress, config.ingress, config.api, sidecar.advertise_ip,
    )  # fmt: skip
    await sidecar.run_until_stopped()
    log.info("stopping")
    await sidecar.stop()
    return 0


def run(config: Config) -> int:
    """Run the sidecar until SIGINT or SIGTERM; the process exit code."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _install_uvloop()
    return asyncio.run(_main(config))
