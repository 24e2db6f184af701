"""Where a webhook may be sent: http(s) URLs whose host resolves to public addresses only (unless the operator
allows a network), checked when the endpoint is registered and again at every delivery, which then connects to
the very address it checked (a name that resolves elsewhere a moment later cannot redirect it)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from webhooks.settings import webhook_settings

MAX_URL = 2048


class RefusedURL(ValueError):
    """The URL cannot be a webhook endpoint; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its scheme, host (for the Host header and TLS), port, path with query, and the address to
    connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def check(url: str) -> Target:
    """The URL's target if a webhook may go there now, else RefusedURL naming the reason."""
    if len(url) > MAX_URL:
        raise RefusedURL(f"the URL is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedURL(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedURL("the URL must start with https:// or http://")
    if not parts.hostname:
        raise RefusedURL("the URL has no host")
    if parts.username or parts.password:
        raise RefusedURL("the URL must not carry a user name or password (sign with the endpoint's secret instead)")
    if parts.fragment:
        raise RefusedURL("the URL must not have a #fragment")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedURL(f"host {host!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    for address in addresses:
        refused = _refusal(ipaddress.ip_address(address.split("%")[0]))
        if refused:
            raise RefusedURL(f"host {host!r} resolves to {address}, {refused}; webhooks go to public addresses "
                             "only (SAGA_WEBHOOK_ALLOWED_NETWORKS lets others in)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=parts.scheme, host=host, port=port, path=path, address=addresses[0])


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is no place for a webhook, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in webhook_settings().networks):
        return None
    reasons = (
        ("a loopback address", ip.is_loopback),
        ("a link-local address (cloud metadata lives there)", ip.is_link_local),
        ("a private address", ip.is_private),
        ("a multicast address", ip.is_multicast),
        ("an unspecified address", ip.is_unspecified),
        ("a reserved address", ip.is_reserved),
    )
    for reason, applies in reasons:
        if applies:
            return reason
    return None if ip.is_global else "not a public address"
