"""Which HTTP requests the control API looks at: Host, Origin, Content-Type.

A browser can be made to send requests to a loopback port by any page it
shows: a form POST with a `text/plain` body needs no CORS preflight, and a
page on a name the attacker re-points at 127.0.0.1 (DNS rebinding) can read
the replies too. Three checks close that, before any handler runs:

- Host must name this API: a loopback name (localhost, 127.0.0.0/8, ::1),
  the address the request arrived at or the API is bound to, or a name in
  the operator's allow list (KVMESH_CONTROL_ALLOWED_HOSTS). A rebinding page
  sends its own name, which is none of these. The port is not compared:
  the attacker's page names the right port anyway, and port-forwards may
  change it.
- Origin, when present, must be this same scheme, host and port. Browsers
  send it on every cross-site POST and on rebound requests; scripts do not.
- POST bodies must be `application/json`, a type a cross-site page can only
  send after a preflight, which the API never answers.

Pure functions over header strings: no aiohttp, no I/O. `None` from a check
means the request may go on; a string is the reason to refuse it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable

JSON_TYPE = "application/json"
LOOPBACK_NAMES = frozenset({"localhost"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOW_LIST_SETTING = "KVMESH_CONTROL_ALLOWED_HOSTS"
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?")
_AUTHORITY = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>[0-9]{1,5}))?")
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/?#]*)")
_MAX_HOST_CHARS = 255


@dataclass(frozen=True, slots=True)
class Authority:
    """A parsed `host[:port]`: host lowercased, without brackets or a trailing dot."""

    host: str
    port: int | None


def parse_authority(text: str) -> Authority | None:
    """`host`, `host:port`, `[v6]` or `[v6]:port`; None for anything else (userinfo too)."""
    text = text.strip().lower()
    match = _AUTHORITY.fullmatch(text) if len(text) <= _MAX_HOST_CHARS else None
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    if match["ip6"] is not None:
        try:
            return Authority(str(ipaddress.IPv6Address(match["ip6"])), port)
        except ValueError:
            return None
    if not _NAME.fullmatch(match["name"]):
        return None
    return Authority(match["name"].rstrip("."), port)


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address, brackets allowed) can only mean this machine.

    Wildcards ("", 0.0.0.0, ::) are not loopback: they bind every interface.
    Names other than localhost are not either: what they resolve to is not
    known here.
    """
    host = host.strip().strip("[]").lower().rstrip(".")
    if host in LOOPBACK_NAMES:
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def same_host(a: str, b: str) -> bool:
    """Equal names, or equal addresses however they are written (::1 == 0:0::1)."""
    a, b = a.strip("[]").lower().rstrip("."), b.strip("[]").lower().rstrip(".")
    ip_a, ip_b = _ip(a), _ip(b)
    return ip_a == ip_b if ip_a is not None and ip_b is not None else a == b


def host_refusal(host_headers: list[str], own_hosts: Iterable[str]) -> str | None:
    """Why the request's Host does not name this API, or None when it does.

    `own_hosts`: the address the request arrived at, the bind address and
    the operator's allow list; loopback names are always accepted.
    """
    if len(host_headers) != 1:
        return f"refused: expected one Host header, got {len(host_headers)}"
    authority = parse_authority(host_headers[0])
    if authority is not None and (is_loopback_host(authority.host)
                                  or any(same_host(authority.host, h) for h in own_hosts if h)):
        return None
    return (f"refused: Host {_preview(host_headers[0])} does not name this control API; use "
            f"127.0.0.1 or localhost, the address it is bound to, or add the name to "
            f"{ALLOW_LIST_SETTING}")


def origin_refusal(origin_headers: list[str], host_header: str, scheme: str) -> str | None:
    """Why the request's Origin is another site, or None when absent or the same one.

    Called after `host_refusal` accepted `host_header`.
    """
    if not origin_headers:
        return None
    why = f"refused: Origin {_preview(origin_headers[0])} is not this control API; it takes no cross-site requests"
    if len(origin_headers) != 1:
        return why
    match = _ORIGIN.fullmatch(origin_headers[0].strip().lower())
    origin = parse_authority(match["authority"]) if match else None
    target = parse_authority(host_header)
    if origin is None or target is None or match["scheme"] != scheme:
        return why
    default = DEFAULT_PORTS.get(scheme)
    if not same_host(origin.host, target.host) or (origin.port or default) != (target.port or default):
        return why
    return None


def content_type_refusal(content_type: str | None) -> str | None:
    """Why a POST body's type is refused, or None for application/json (any parameters)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON_TYPE:
        return None
    return f"POST bodies must be sent as Content-Type: {JSON_TYPE}, got {_preview(content_type or '')}"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return ip


def _preview(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
