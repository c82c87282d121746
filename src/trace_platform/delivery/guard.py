"""SSRF guard for webhook URLs (SPEC §12).

`check_url` refuses what is not https and IP literals that are not public; `GuardedResolver`
is the resolver of the delivery HTTP client: it resolves a name, refuses it when any of its
addresses is loopback, private, link-local (the cloud metadata address among them),
multicast, reserved or IPv6 unique-local, and hands the client exactly the addresses it
checked — the connection goes to a checked address, so a name cannot re-resolve elsewhere
between the check and the connect. aiohttp caches the resolver's answers (the DNS check is
not on every request's path).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """The URL may not be called; the message is safe to store (no credentials)."""


def address_refused(ip: IPAddress) -> str | None:
    """Why this address may not be called, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_refused(mapped)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_private or not ip.is_global:
        return "private or reserved"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> bool:
    """inet_aton's other spellings of an IPv4 address (hex, octal, decimal, short forms)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def check_url(url: str, allow_private: bool) -> str:
    """The host to connect to, after the checks that need no DNS; raises UrlRefused."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a malformed port raises here
    except ValueError:
        raise UrlRefused("the URL is malformed") from None
    if parts.scheme not in ("https", "http") or not host:
        raise UrlRefused("the URL must be https://host/...")
    if allow_private:
        return host
    if parts.scheme != "https":
        raise UrlRefused("webhook URLs must use https")
    ip = _literal(host)
    if ip is not None and (why := address_refused(ip)):
        raise UrlRefused(f"the address is {why}")
    if ip is None and _legacy_ipv4(host):
        raise UrlRefused(
            "numeric hosts must be dotted-quad IPv4 (0x7f000001, 2130706433, 127.1 are not)"
        )
    if host.rstrip(".").lower() == "localhost" or host.lower().endswith(".localhost"):
        raise UrlRefused("the address is loopback")
    return host


class GuardedResolver(AbstractResolver):
    """Resolve, then refuse names with any non-public address (unless allow_private)."""

    def __init__(self, allow_private: bool = False, inner: AbstractResolver | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            answers = await self.inner.resolve(host, port, family)
        except OSError as exc:
            raise UrlRefused(f"the name does not resolve ({type(exc).__name__})") from None
        if not self.allow_private:
            for answer in answers:
                ip = _literal(answer["host"].split("%")[0])
                why = "not an IP address" if ip is None else address_refused(ip)
                if why:
                    raise UrlRefused(f"the name resolves to an address that is {why}")
        return answers

    async def close(self) -> None:
        await self.inner.close()
