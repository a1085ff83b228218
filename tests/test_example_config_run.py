"""conf/regproxy.yaml as a newcomer runs it: ``regproxy run --config conf/regproxy.yaml`` starts and
stops on SIGTERM with no warning they cannot act on, and its static cluster is not the sidecar itself.

The run happens in a network namespace of its own (tests/netns.py), where the file's fixed ports
(20881, 20882, 22222, 34901) are free whatever else runs on this machine."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from regproxy.config import load_config
from tests.netns import NetnsUnavailable, PodNetwork, check_available
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "regproxy.yaml"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
WILDCARDS = {"0.0.0.0", "::"}

# Warnings the example may log, each naming what to do: the process's open-files limit (depends on
# the machine: raise it, or lower limits.max_connections), no registry configured (names the key),
# and the placeholder host of the example cluster, whose comment says to replace it.
ACTIONABLE = (
    re.compile(r"WARNING regproxy\.rlimits: the open-files limit .* raise the hard limit"),
    re.compile(r"WARNING regproxy: no registry is configured \(registries: in the config file"),
    re.compile(r"WARNING regproxy\.health\.active: health: greetings-provider\.example:20882 is unhealthy"),
)


def test_the_example_cluster_is_not_the_sidecar_itself() -> None:
    c = load_config(str(EXAMPLE))
    own = {(str(a.host), a.port) for a in (c.egress, c.ingress, c.api, c.admin)}
    for cluster in c.clusters:
        for host in cluster.hosts:
            name, port = str(host.address.host), host.address.port
            for own_host, own_port in own:
                same_host = name == own_host or (
                    name in LOOPBACK_NAMES | WILDCARDS and own_host in LOOPBACK_NAMES | WILDCARDS
                )
                assert not (same_host and port == own_port), (
                    f"cluster {cluster.name}: {host.address} is this sidecar's own listener "
                    f"{own_host}:{own_port}"
                )


@pytest.mark.netns
@pytest.mark.timeout(90)
async def test_the_example_config_starts_and_stops_without_a_warning_left_unexplained(tmp_path: Path) -> None:
    try:
        check_available()
    except NetnsUnavailable as exc:  # never skipped: CI runs as root with iproute2
        pytest.fail(str(exc), pytrace=False)
    log_path = tmp_path / "regproxy.log"
    with PodNetwork(["example"]) as net:
        pod = net.pods["example"]
        with open(log_path, "wb") as log:
            # As the README types it; data_dir "." is this test's directory.
            proc = await asyncio.create_subprocess_exec(
                *pod.exec_args(sys.executable, "-m", "regproxy", "run", "--config", str(EXAMPLE)),
                stdout=log, stderr=log, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
        try:
            def running() -> bool:
                assert proc.returncode is None, log_path.read_text()
                return "regproxy running" in log_path.read_text()

            await wait_for(running, 30, "regproxy running", interval=0.1, detail=log_path.read_text)
            proc.send_signal(signal.SIGTERM)  # drain (grace_s 3), then exit 0
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = log_path.read_text()
    assert code == 0, text
    assert "drained" in text, text
    unexplained = [
        line
        for line in text.splitlines()
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)
        and not any(p.search(line) for p in ACTIONABLE)
    ]
    assert unexplained == [], text
