"""The address this sidecar advertises in registries, when the config does not set one."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8


def _ifaddr(sock: socket.socket, name: str) -> str | None:
    packed = struct.pack("256s", name.encode()[:15])
    try:
        flags = struct.unpack("H", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, packed)[16:18])[0]
        if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
            return None
        return socket.inet_ntoa(fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, packed)[20:24])
    except OSError:
        return None  # no IPv4 address on this interface


def interface_addresses() -> list[tuple[str, str]]:
    """(interface, IPv4) of every interface that is up and not loopback, in kernel order."""
    found: list[tuple[str, str]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            addr = _ifaddr(sock, name)
            if addr is not None:
                found.append((name, addr))
    return found


def detect_advertise_ip() -> str:
    """The first non-loopback IPv4 address of an interface that is up; else the host name's
    address; else 127.0.0.1 (a single-host setup). Asks the kernel only: no packet is sent."""
    for _name, addr in interface_addresses():
        if not ipaddress.ip_address(addr).is_link_local:
            return addr
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
    except OSError:
        pass
    return "127.0.0.1"


def loopback_ingress_ip(ingress_host: str) -> str | None:
    """The address to advertise for an ingress bound to ``ingress_host`` when that is a loopback
    address (``localhost`` counts as 127.0.0.1); None when it is not loopback.

    Such an ingress is reachable on this host only, at exactly that address: registering a detected
    interface address instead would send every caller to a port nothing listens on there."""
    if ingress_host.lower().rstrip(".") == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(ingress_host)
    except ValueError:
        return None  # a host name (or wildcard) may resolve to anything
    return str(ip) if ip.is_loopback else None
