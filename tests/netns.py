"""Pods for tests: network namespaces joined by veth pairs to one Linux bridge.

Each pod is a namespace ``rpxpod-<pid>-<role>`` with ``lo`` up and an ``eth0`` (the namespace end
of a veth pair) holding its own address in a /24; the host ends (``rpx<pid>v<i>``) are ports of
the bridge ``rpx<pid>br``, which also holds the subnet's ``.1`` so that the test process (in the
host's namespace) reaches every pod, as a node reaches its pods.  Inside a pod the standard ports
are free for the taking: nothing else listens there.

``<pid>`` is the test process's: concurrent runs never share a name, and a run that crashed before
its cleanup is recognised by a pid that is gone; :func:`clean_leftovers` removes what it left
(killing what still runs in its namespaces).  Interface names stay within the kernel's 15 bytes.

Needs root and iproute2; the caller fails (never skips) when either is missing.  Pod-to-pod traffic
crosses the bridge: a host firewall that drops bridged packets (br_netfilter with a FORWARD policy
of DROP) would cut every pod off.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NETNS_PREFIX = "rpxpod-"
IF_PREFIX = "rpx"
_NETNS_RE = re.compile(rf"^{NETNS_PREFIX}(\d+)-[\w-]+$")
_IF_RE = re.compile(rf"^{IF_PREFIX}(\d+)(?:br|v\d+)$")
# Subnets are taken from 10.214.0.0/16, one /24 per run; the first free one from a pid-derived start.
_SUPERNET = ipaddress.ip_network("10.214.0.0/16")
# Serialises subnet choice and cleanup between concurrent runs on one machine.
_LOCK = Path(tempfile.gettempdir()) / "regproxy-netns.lock"


class NetnsUnavailable(RuntimeError):
    """Not root, or no `ip` (iproute2): the pod tests cannot build their network."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout, or RuntimeError naming the command and what ip said."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def check_available() -> None:
    if shutil.which("ip") is None:
        raise NetnsUnavailable("`ip` (iproute2) is missing: run scripts/test-deps.sh as root")
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root (CI runs the tests as root)")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_names() -> list[str]:
    # Lines are "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def link_names() -> list[str]:
    # `ip -o link` lines: "7: NAME@PEER: <FLAGS> ..." or "7: NAME: <FLAGS> ...".
    return [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").splitlines()]


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL what still runs in ``netns`` (only namespaces this module made): a namespace with
    processes in it outlives ``ip netns del``, and so would its veth."""
    with contextlib.suppress(RuntimeError):
        for pid in ip("netns", "pids", netns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _remove(netns: Sequence[str], links: Sequence[str]) -> list[str]:
    """Best effort, everything attempted: the errors, for the caller to report."""
    errors: list[str] = []
    for name in netns:
        _kill_netns_processes(name)
    for name in links:  # deleting a host end deletes its pair; bridges last (sorted: "br" < "v")
        try:
            ip("link", "del", name)
        except RuntimeError as e:
            errors.append(str(e))
    for name in netns:
        try:
            ip("netns", "del", name)
        except RuntimeError as e:
            errors.append(str(e))
    return errors


def clean_leftovers() -> list[str]:
    """Remove the namespaces and interfaces of earlier runs whose process is gone; their names."""
    with _locked():
        netns = [n for n in netns_names() if (m := _NETNS_RE.match(n)) and not _alive(int(m.group(1)))]
        links = [n for n in link_names() if (m := _IF_RE.match(n)) and not _alive(int(m.group(1)))]
        links.sort(key=lambda n: n.endswith("br"))  # veths first, then the bridge they were ports of
        _remove(netns, links)
    return netns + links


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    """A /24 of the supernet that no address or route on this host overlaps."""
    used: list[ipaddress.IPv4Network] = []
    for line in ip("-4", "-o", "addr", "show").splitlines():
        used.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        dest = line.split()[0]
        if dest not in ("default", "broadcast", "local", "unreachable", "blackhole", "multicast"):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(dest, strict=False))
    subnets = list(_SUPERNET.subnets(new_prefix=24))
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise RuntimeError(f"no free /24 left in {_SUPERNET} for the pod network")


@dataclass
class Pod:
    role: str
    netns: str
    ip: str
    host_veth: str  # the bridge-side end of the pod's veth pair

    def exec_args(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the pod (``ip netns exec`` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.netns, *cmd]


@dataclass
class PodNetwork:
    """Pods named by ``roles`` on one bridge; :meth:`create` builds them, :meth:`destroy` removes
    everything (also after a partial create)."""

    roles: Sequence[str]
    pods: dict[str, Pod] = field(default_factory=dict)
    bridge: str = ""
    gateway: str = ""  # the bridge's address: how the host reaches the pods
    _made_netns: list[str] = field(default_factory=list)
    _made_links: list[str] = field(default_factory=list)

    def create(self) -> None:
        pid = os.getpid()
        self.bridge = f"{IF_PREFIX}{pid}br"
        with _locked():  # two runs must not pick the same subnet
            subnet = _free_subnet(pid % 256)
            hosts = subnet.hosts()
            self.gateway = str(next(hosts))
            ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
            self._made_links.append(self.bridge)
            ip("addr", "add", f"{self.gateway}/{subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, role in enumerate(self.roles):
            netns, veth = f"{NETNS_PREFIX}{pid}-{role}", f"{IF_PREFIX}{pid}v{i}"
            ip("netns", "add", netns)
            self._made_netns.append(netns)
            ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
            self._made_links.insert(0, veth)  # removed before the bridge
            ip("link", "set", veth, "master", self.bridge, "up")
            pod = Pod(role, netns, str(next(hosts)), veth)
            ip("-n", netns, "addr", "add", f"{pod.ip}/{subnet.prefixlen}", "dev", "eth0")
            ip("-n", netns, "link", "set", "eth0", "up")
            ip("-n", netns, "link", "set", "lo", "up")  # 127.0.0.1 inside the pod
            self.pods[role] = pod

    def cut(self, role: str) -> None:
        """Cut a pod off: its veth's bridge end goes down, so nothing reaches it and nothing
        leaves it (packets are dropped, no reset is sent: as a node or link that dies)."""
        ip("link", "set", self.pods[role].host_veth, "down")

    def reconnect(self, role: str) -> None:
        """Undo :meth:`cut`: the bridge end up again."""
        ip("link", "set", self.pods[role].host_veth, "up")

    def destroy(self) -> None:
        errors = _remove(self._made_netns, self._made_links)
        self._made_netns, self._made_links = [], []
        if errors:
            raise RuntimeError("removing the pod network: " + "; ".join(errors))

    def __enter__(self) -> PodNetwork:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
