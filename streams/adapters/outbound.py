"""HTTP requests to addresses a user chose (webhooks), made so that they cannot reach inside.

A user-supplied URL is the classic server-side request forgery: `http://169.254.169.254/` is a
cloud's metadata service, `http://10.0.0.7:9200/` an internal OpenSearch. So: https only
(unless allowed), and the host's addresses are checked after DNS resolution and again at
connect time. The check lives in the resolver aiohttp connects through, so a name that
resolves to a public address when checked and to a private one a moment later (DNS rebinding)
is still refused. Redirects are never followed.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver


# The well-known NAT64 prefix: on an IPv6-only cluster 64:ff9b::a00:7 is 10.0.0.7.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeTarget(Exception):
    """A URL restyle will not call; the message is safe to show the user."""


@dataclass(frozen=True)
class OutboundPolicy:
    allow_http: bool = False
    # Networks reachable even though they are private (a receiver inside the cluster).
    allowed_networks: tuple[ipaddress._BaseNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, allow_http: bool, allowed_networks: list[str]) -> "OutboundPolicy":
        return cls(allow_http, tuple(ipaddress.ip_network(n, strict=False)
                                     for n in allowed_networks))

    def check_url(self, url: str) -> None:
        """Refuse what can be refused without DNS: the scheme, and literal addresses."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a port out of range)
        except ValueError as exc:
            raise UnsafeTarget(f"the webhook URL cannot be read: {exc}") from None
        if parts.scheme not in (("https", "http") if self.allow_http else ("https",)):
            raise UnsafeTarget("webhooks must use https (RESTYLE_WEBHOOK_ALLOW_HTTP allows "
                               "http)")
        if not parts.hostname:
            raise UnsafeTarget("the webhook URL names no host")
        if parts.username or parts.password:
            raise UnsafeTarget("the webhook URL may not carry credentials")
        try:
            address = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a name: checked when it resolves
        self.check_address(address)

    def check_address(self, address: ipaddress._BaseAddress) -> None:
        # IPv6 forms that carry an IPv4 address reach that address: judge the address inside.
        if isinstance(address, ipaddress.IPv6Address):
            inner = address.ipv4_mapped or address.sixtofour or \
                (address.teredo[1] if address.teredo else None)
            if inner is None and address in NAT64:
                inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            if inner is not None:
                return self.check_address(inner)
        if any(address in network for network in self.allowed_networks):
            return
        if not address.is_global or address.is_multicast:
            raise UnsafeTarget("the webhook host is not a public address (loopback, private, "
                               "link-local and reserved addresses are refused)")


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, keeping only the addresses the policy allows."""

    def __init__(self, policy: OutboundPolicy):
        self.policy = policy
        self.inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        resolved = await self.inner.resolve(host, port, family)
        allowed = []
        for entry in resolved:
            try:
                self.policy.check_address(ipaddress.ip_address(entry["host"]))
            except UnsafeTarget:
                continue
            allowed.append(entry)
        if not allowed:
            raise UnsafeTarget(f"{host} resolves only to addresses that are not public")
        return allowed

    async def close(self) -> None:
        await self.inner.close()


def guarded_session(policy: OutboundPolicy, timeout_s: float) -> aiohttp.ClientSession:
    """A session that connects only where the policy allows (literal addresses are checked by
    check_url: aiohttp does not resolve them)."""
    connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(policy), use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


def redact(url: str) -> str:
    """A URL as shown in responses and logs: scheme and host only (paths and queries of
    webhook URLs often carry tokens)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an unreadable URL)"
    return f"{parts.scheme}://{parts.hostname or '?'}{port}/…"
