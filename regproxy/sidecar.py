"""Wires the parts together and owns the lifecycle: start, run until a signal, stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from regproxy.config import Config
from regproxy.proxy.engine import Listener, ListenerSettings, local_app_table
from regproxy.routing import TableHolder

log = logging.getLogger("regproxy")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.egress_table = TableHolder(config.to_routing_table())
        self.ingress_table = TableHolder(local_app_table("127.0.0.1", config.app_port))
        self.egress = Listener(
            "egress", self._settings(config.egress.host, config.egress.port), self.egress_table
        )
        self.ingress = Listener(
            "ingress", self._settings(config.ingress.host, config.ingress.port), self.ingress_table
        )
        self._stopped = asyncio.Event()

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
        await self.ingress.start()
        try:
            await self.egress.start()
        except BaseException:
            await self.ingress.stop()
            raise

    async def stop(self) -> None:
        await self.egress.stop()
        await self.ingress.stop()
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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, sidecar.request_stop)
    log.info("regproxy running (egress %s, ingress %s)", config.egress, config.ingress)
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
