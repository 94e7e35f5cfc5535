"""Which webhook URLs meter may call.

Only http(s). Hosts on loopback, private, link-local or otherwise non-public addresses are refused
unless `METER_WEBHOOK_ALLOW_PRIVATE=1` (a budget's URL must not turn meter into a way to reach
internal services). `METER_WEBHOOK_ALLOW_HOSTS`, when set, is the only set of hosts ever contacted:
checked before any network I/O, DNS included.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from meter.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedUrl(ValueError):
    """A webhook URL meter will not store or call; the message says why (never the secret)."""


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise RefusedUrl("webhook_url: not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise RefusedUrl("webhook_url: must be an http:// or https:// URL")
    if not parts.hostname:
        raise RefusedUrl("webhook_url: has no host")
    return parts


def check_scheme(url: str) -> str:
    """The checks that need no settings: an http(s) URL with a host."""
    _split(url)
    return url.strip()


def literal_address(host: str) -> IPAddress | None:
    """`host` as an IP address if it is one, including legacy forms such as `2130706433`."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton accepts what the OS resolver would (0x7f.1, 2130706433, 127.1).
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _is_local_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "localhost" or name.endswith(".localhost")


def check_for_storage(url: str, settings: Settings) -> str:
    """Validate a URL given to create or patch a budget (no DNS lookup: that is network I/O)."""
    parts = _split(url)
    host = parts.hostname or ""
    if not settings.webhook_allow_private:
        address = literal_address(host)
        if _is_local_name(host) or (address is not None and not is_public(address)):
            raise RefusedUrl(
                f"webhook_url: host {host} is loopback or private; "
                "set METER_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
            )
    return url.strip()


def check_before_send(url: str, settings: Settings) -> None:
    """Run right before a delivery: the allow-list first (no I/O), then where the name resolves."""
    parts = _split(url)
    host = (parts.hostname or "").lower()
    allowed = settings.allowed_webhook_hosts
    if allowed is not None and host not in allowed:
        raise RefusedUrl(f"host {host} is not in METER_WEBHOOK_ALLOW_HOSTS")
    if settings.webhook_allow_private:
        return
    if _is_local_name(host):
        raise RefusedUrl(f"host {host} is loopback (METER_WEBHOOK_ALLOW_PRIVATE is off)")
    address = literal_address(host)
    if address is not None:
        addresses = [address]
    else:
        try:
            infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise RefusedUrl(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for resolved in addresses:
        if not is_public(resolved):
            raise RefusedUrl(
                f"host {host} resolves to a non-public address (METER_WEBHOOK_ALLOW_PRIVATE is off)"
            )
