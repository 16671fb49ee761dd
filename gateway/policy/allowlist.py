"""Source allowlists: which LAN hosts may use the gateway and which WAN peers may reach it.

Addresses are normalised once (``normalise_address``) so that the allowlist, the ban list and
the per-source counters all agree on one key per host: an IPv4-mapped IPv6 address from a
dual-stack socket (``::ffff:192.0.2.1``) is the IPv4 host it maps, and IPv6 is compressed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(ip: str) -> IPAddress | None:
    """The address ``ip`` names, IPv4-mapped IPv6 unwrapped; None if it is not an address."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalise_address(ip: str) -> str | None:
    address = parse_address(ip)
    return None if address is None else address.compressed


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


class Allowlist:
    """A set of CIDR networks, IPv4 and IPv6."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        networks = parse_networks(cidrs)
        self._v4 = tuple(n for n in networks if n.version == 4)
        self._v6 = tuple(n for n in networks if n.version == 6)

    def __contains__(self, address: IPAddress) -> bool:
        if address.version == 4:
            return any(address in n for n in self._v4)
        return any(address in n for n in self._v6)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)
