"""Locating the provider's SIP/TLS server (RFC 3263 §4).

Order of look-ups for a host name with no port: NAPTR records for SIPS over TCP
(``SIPS+D2T``), then SRV ``_sips._tcp.<domain>``, then A/AAAA on port 5061. A numeric address
or an explicit port skips NAPTR and SRV (§4.2). Only TLS targets are ever returned: the gateway
does not fall back to plaintext transports when the DNS offers them.

dnspython does the DNS work; the ordering rules (NAPTR order/preference, SRV priority and
weighted choice per RFC 2782) are applied here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver


@dataclass(frozen=True)
class Target:
    """One place to try: an address, a port, and the name to verify in the certificate."""

    address: str
    port: int
    #: The name the certificate must carry (RFC 5922 §4: the domain, not the SRV target host).
    server_name: str


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def order_srv(
    records: list[tuple[int, int, int, str]], rng: random.Random | None = None
) -> list[tuple[str, int]]:
    """RFC 2782: ascending priority; within one, a weighted random order."""
    rng = rng or random.Random()
    out: list[tuple[str, int]] = []
    for priority in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == priority]
        while group:
            total = sum(r[1] for r in group)
            pick = rng.uniform(0, total) if total else 0
            running = 0
            chosen = group[0]
            for record in group:
                running += record[1]
                if total and running >= pick:
                    chosen = record
                    break
            group.remove(chosen)
            out.append((chosen[3], chosen[2]))
    return out


async def resolve_provider(
    host: str, port: int | None, server_name: str | None = None
) -> list[Target]:
    """Every TLS target for the provider, in the order to try them."""
    name = server_name or host.strip("[]")
    if _is_address(host):
        return [Target(host.strip("[]"), port or 5061, name)]
    resolver = dns.asyncresolver.Resolver()
    pairs: list[tuple[str, int]] = []
    if port is None:
        srv_name = f"_sips._tcp.{host}"
        try:
            naptr = await resolver.resolve(host, "NAPTR")
            usable = sorted(
                (r for r in naptr if r.service.decode().upper() == "SIPS+D2T"),
                key=lambda r: (r.order, r.preference),
            )
            if usable:
                srv_name = usable[0].replacement.to_text().rstrip(".")
        except (dns.exception.DNSException, OSError):
            pass
        try:
            srv = await resolver.resolve(srv_name, "SRV")
            records = [(r.priority, r.weight, r.port, r.target.to_text().rstrip(".")) for r in srv]
            pairs = order_srv(records)
        except (dns.exception.DNSException, OSError):
            pairs = []
    if not pairs:
        pairs = [(host, port or 5061)]
    targets: list[Target] = []
    for target_host, target_port in pairs:
        for address in await _addresses(target_host):
            targets.append(Target(address, target_port, name))
    return targets


async def _addresses(host: str) -> list[str]:
    if _is_address(host):
        return [host.strip("[]")]
    found: list[str] = []
    # The system resolver honours /etc/hosts, which labs and tests rely on. It blocks, so it
    # runs in the loop's executor: a slow DNS server must not stall all signalling.
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in found:
            found.append(str(sockaddr[0]))
    return found
