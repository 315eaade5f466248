"""Which ``Host`` and ``Origin`` a request may carry, decided from parsed addresses.

Browsers are the reason: any web page can make its visitor's browser POST to 127.0.0.1
(it then carries a foreign ``Origin``), and DNS rebinding points a foreign name at
127.0.0.1 so the page can read the answers (it then carries a foreign ``Host``). A request
is served only for a loopback name or address, the listen address, or a name listed in
``STOCKYARD_PUBLIC_HOSTS``; and only without an ``Origin`` or with an allowed one.

"Loopback" is decided by :mod:`ipaddress` on a parsed address (or the name ``localhost``),
never by a string prefix: ``127.evil.example`` is a DNS name anyone can point anywhere.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)
ANY_HOST = "*"
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and for addresses in 127.0.0.0/8 or ``::1`` (brackets allowed)."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.rstrip(".") in LOOPBACK_NAMES:
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def split_authority(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` (IPv6 literals in brackets) as (lower-case host, port), or None if malformed."""
    authority = authority.strip().lower()
    port: int | None = None
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or not _is_ipv6(host):
            return None
        if rest:
            if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
                return None
            port = int(rest[1:])
    else:
        host, sep, port_text = authority.partition(":")
        if sep:
            if not _PORT.fullmatch(port_text):
                return None
            port = int(port_text)
        if not _NAME.fullmatch(host):
            return None
    if port is not None and port > 65535:
        return None
    return host, port


def parse_public_hosts(value: str | None) -> tuple[str, ...]:
    """``STOCKYARD_PUBLIC_HOSTS``: comma-separated host names (a port, if given, is ignored), or ``*``."""
    names = []
    for entry in (value or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry == ANY_HOST:
            names.append(ANY_HOST)
            continue
        parsed = split_authority(entry)
        if parsed is None:
            raise ValueError(
                f"STOCKYARD_PUBLIC_HOSTS must be comma-separated host names like proxy.example.com, got {entry!r}"
            )
        names.append(parsed[0])
    return tuple(names)


@functools.lru_cache(maxsize=256)
def host_allowed(authority: str | None, listen_host: str, public_hosts: tuple[str, ...]) -> bool:
    """May a request for ``authority`` (its Host) be answered here?

    A request without a Host (HTTP/1.0; browsers always send one) is allowed. The answer
    depends on the arguments only, and a server sees a handful of Host values: cached, as
    parsing addresses with :mod:`ipaddress` on every request cost measurable CPU (bounded,
    so a sender cycling through names only evicts).
    """
    if authority is None:
        return True
    parsed = split_authority(authority)
    if parsed is None:
        return False
    host = parsed[0]
    if is_loopback(host) or ANY_HOST in public_hosts or host in public_hosts:
        return True
    listen = listen_host.strip().lower().strip("[]")
    unspecified = _address(listen)
    if unspecified is not None and unspecified.is_unspecified:
        return False  # 0.0.0.0 or :: is no name a client can use
    return host == listen


def origin_allowed(origin: str | None, authority: str | None, cors_origin: str | None) -> bool:
    """No Origin (not a browser, or a same-origin GET), the configured CORS origin, or our own origin.

    "Our own" is an http(s) origin whose host and port are the request's Host: the console
    served from this server calling its API. ``null`` (sandboxed frames, files) never passes.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if cors_origin and origin == cors_origin.strip().lower().rstrip("/"):
        return True
    if authority is None:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.fragment:
        return False
    return parts.netloc == authority.strip().lower()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(value: str | None) -> tuple[Network, ...]:
    """``STOCKYARD_TRUSTED_PROXIES``: comma-separated addresses or networks (``10.0.0.0/8``) of the
    load balancers whose ``X-Forwarded-For`` is believed."""
    nets = []
    for entry in (value or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                "STOCKYARD_TRUSTED_PROXIES must be comma-separated addresses or networks like "
                f"10.0.0.0/8, got {entry!r}"
            ) from None
    return tuple(nets)


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    """``address`` is one of the trusted proxies' (an IPv4-mapped IPv6 address as its IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)


# A path prefix as a reverse proxy names it: segments of RFC 3986 path characters, no dot segments.
_PREFIX = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+")


def forwarded_prefix(value: str | None) -> str:
    """The path prefix a trusted reverse proxy serves Stockyard under (``X-Forwarded-Prefix:
    /llm``), without its trailing slash, for the URLs Stockyard hands out; "" when there is
    none or it is not a plain path (never a scheme, host, query or dot segment)."""
    prefix = (value or "").split(",")[0].strip().rstrip("/")
    return prefix if _PREFIX.fullmatch(prefix) else ""


def client_address(peer: str, forwarded_for: list[str] | None, trusted: tuple[Network, ...]) -> str:
    """The address a request came from: the peer's own, unless the peer is a trusted proxy.

    Then it is the nearest address in ``X-Forwarded-For`` (read right to left, every header line
    in order) that is not itself a trusted proxy: a client can put anything at the left of the
    header, but only the proxies append on the right. A malformed hop ends the walk at the last
    address known good, so a forged value never becomes the client's address.
    """
    if not trusted or not is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for line in (forwarded_for or []) for hop in line.split(",")]
    found = peer
    for hop in reversed(hops):
        try:
            found = str(ipaddress.ip_address(hop))
        except ValueError:
            return found
        if not is_trusted(found, trusted):
            return found
    return found


def sender(addr: str) -> str:
    """The unit a sender is counted by (refusal traces, admin login throttle): its IPv4 address,
    or its IPv6 /64 — one host's usual share, so a new address in it is not a new sender."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@functools.lru_cache(maxsize=1024)
def counted_sender(address: str, trusted: tuple[Network, ...]) -> str | None:
    """The sender a connection counts for (:func:`sender`), or None for loopback and the trusted
    proxies (a load balancer carries everyone). Asked when a connection opens (on the accept
    loop's thread) and again when it ends: remembered, so the second time and a client
    reconnecting cost no parsing (a sender cycling through addresses only evicts)."""
    if is_loopback(address) or is_trusted(address, trusted):
        return None
    return sender(address)
