"""`kvmesh inspect` and `scripts/mesh-inspect`: the mesh at a glance.

    mesh-inspect URL [--json] [--watch SECONDS] [--secret SECRET]

URL is any peer's control API. Asks it for GET /status?scope=mesh (every
member's status), falling back to that peer's own /status, and prints a table
of members (SWIM state and incarnation, ring share, chunks and bytes per
tier, hit rate, pulls in flight, transports), the bytes codecs saved (on
disk, on the wire, by /compress) and the mesh's recent failures;
members that died or left stay listed while any peer still holds them.
`--json` prints the raw reply;
`--watch N` redraws every N seconds until Ctrl-C. The secret comes from
`--secret` or KVMESH_SECRET; it is never sent: each request carries a
Kvmesh-HMAC signature made with it (`kvmesh.peers.control_auth`).

Only `fetch_status` and `main` do I/O (stdlib urllib, no extra dependencies);
everything else turns a status document into text and is tested as such.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from kvmesh.errors import KvmeshError
from kvmesh.peers import control_auth

SECRET_ENV = "KVMESH_SECRET"
CLEAR_SCREEN = "\x1b[2J\x1b[H"
MAX_REPLY_BYTES = 16 << 20
MAX_FAILURES_SHOWN = 20
MEMBER_HEADERS = ("PEER", "STATE", "INC", "RING", "CHUNKS cpu/disk", "CPU used/cap", "DISK used/cap",
                  "HIT RATE", "PULLS", "TRANSPORTS")
FAILURE_HEADERS = ("TIME", "PEER", "FAILURE")
CODEC_HEADERS = ("PEER", "CODEC", "DISK SAVED", "WIRE SAVED", "COMPRESS SAVED")
STATE_RANK = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}  # SWIM's precedence at one incarnation


class InspectError(KvmeshError):
    """The control API could not be asked, or its answer was not a status."""


# ---- I/O ------------------------------------------------------------------------

def fetch_status(url: str, secret: str | None, timeout_s: float) -> dict[str, Any]:
    """The mesh status from the peer at `url`; that peer's alone if it cannot fan out."""
    base = url.rstrip("/")
    try:
        return _get_json(base + "/status?scope=mesh", secret, timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise InspectError(f"{base}: HTTP 401: give the mesh secret (--secret or {SECRET_ENV})") from None
        if not 400 <= exc.code < 500:
            raise InspectError(f"{base}: HTTP {exc.code}: {_error_text(exc)}") from None
    try:
        return _get_json(base + "/status", secret, timeout_s)
    except urllib.error.HTTPError as exc:
        raise InspectError(f"{base}: HTTP {exc.code}: {_error_text(exc)}") from None


def _get_json(url: str, secret: str | None, timeout_s: float) -> dict[str, Any]:
    # Signed, never the secret itself: the URL may be plain HTTP across a network.
    headers = control_auth.signed_headers(secret.encode(), "GET", url) if secret else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout_s) as resp:
            raw = resp.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError) as exc:
        raise InspectError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if len(raw) > MAX_REPLY_BYTES:
        raise InspectError(f"{url}: reply over {MAX_REPLY_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InspectError(f"{url}: reply is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InspectError(f"{url}: reply is not a JSON object")
    return doc


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return json.loads(exc.read(1 << 16))["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return exc.reason


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.url if "://" in args.url else "http://" + args.url
    secret = args.secret or os.environ.get(SECRET_ENV) or None

    def frame() -> str:
        doc = fetch_status(url, secret, args.timeout)
        return json.dumps(doc, indent=2, sort_keys=True) if args.json else render(doc)

    if args.watch is None:
        try:
            print(frame())
        except InspectError as exc:
            print(f"mesh-inspect: {exc}", file=sys.stderr)
            return 1
        return 0
    return _watch(frame, args.watch)


def _watch(frame: Callable[[], str], every_s: float) -> int:
    try:
        while True:
            try:
                text = frame()
            except InspectError as exc:
                text = f"mesh-inspect: {exc}"
            print(CLEAR_SCREEN + time.strftime("%H:%M:%S ") + f"(every {every_s:g}s, Ctrl-C to stop)\n"
                  + text, flush=True)
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh-inspect",
                                description="Show a kvmesh mesh: members, ring, tiers, hit rates, failures.")
    p.add_argument("url", help="any peer's control API, e.g. http://127.0.0.1:8470")
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    p.add_argument("--watch", type=_positive, metavar="SECONDS", help="refresh every SECONDS")
    p.add_argument("--secret", help=f"the mesh secret (default: ${SECRET_ENV})")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                   help="per request (default: 5)")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


# ---- formatting (pure) -----------------------------------------------------------------

def render(doc: dict[str, Any]) -> str:
    """The whole report for a /status or /status?scope=mesh document."""
    peers = mesh_view(doc)
    members = member_rows(peers)
    failures = failure_rows(peers)
    savings = codec_rows(peers)
    lines = [summary_line(peers), "", format_table(MEMBER_HEADERS, members)]
    if savings:
        lines += ["", "Bytes saved by codecs", format_table(CODEC_HEADERS, savings)]
    if failures:
        lines += ["", "Recent failures", format_table(FAILURE_HEADERS, failures)]
    return "\n".join(lines)


def mesh_view(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{peer_id: status or {"error": ...}} from either kind of status document."""
    if isinstance(doc.get("peers"), dict):
        return doc["peers"]
    return {doc.get("peer_id", "?"): doc}


def summary_line(peers: dict[str, dict[str, Any]]) -> str:
    ok = [s for s in peers.values() if "error" not in s]
    asked = sum(s.get("counters", {}).get("lookup_chunks", 0) for s in ok)
    hit = sum(s.get("counters", {}).get("lookup_hit_chunks", 0) for s in ok)
    rate = percent(hit / asked if asked else None)
    return (f"{len(_all_members(peers))} members, {len(ok)} answered; "
            f"mesh hit rate {rate} ({hit}/{asked} chunks)")


def member_rows(peers: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for peer in _all_members(peers, gone_too=True):
        status = peers.get(peer)
        head = [peer, *member_state(peer, peers), percent(_ring_share(peer, peers))]
        if status is None or "error" in status:
            why = "not asked" if status is None else f"error: {status['error']}"
            rows.append([*head, "-", "-", "-", "-", "-", why])
            continue
        tiers, counters = status.get("tiers", {}), status.get("counters", {})
        cpu, disk = tiers.get("cpu", {}), tiers.get("disk", {})
        rows.append([*head, f"{cpu.get('chunks', 0)}/{disk.get('chunks', 0)}",
                     used_of_cap(cpu), used_of_cap(disk), percent(status.get("hit_rate")),
                     str(counters.get("pulls_inflight", 0)),
                     transports_summary(status.get("transports", {}))])
    return rows


def member_state(peer: str, peers: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(state, incarnation) of `peer` as the answering peers see it.

    The claim SWIM would keep wins: highest incarnation, then the graver
    state. When the peers disagree the state says how many hold it,
    "suspect (1/3)"; "-" where no status lists member states.
    """
    claims = [s["member_states"][peer] for s in peers.values()
              if isinstance(s.get("member_states"), dict) and peer in s["member_states"]]
    if not claims:
        return "-", "-"
    best = max(claims, key=lambda c: (c.get("incarnation", 0), STATE_RANK.get(c.get("state"), -1)))
    state = best.get("state", "?")
    agree = sum(1 for c in claims if c.get("state") == state)
    shown = state if agree == len(claims) else f"{state} ({agree}/{len(claims)})"
    return shown, str(best.get("incarnation", "?"))


def codec_rows(peers: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per peer and codec that saved bytes: on disk, on the wire, by /compress."""
    rows = []
    for peer, status in sorted(peers.items()):
        saved = status.get("codec_bytes_saved")
        if not isinstance(saved, dict):
            continue
        for codec, places in sorted(saved.items()):
            if isinstance(places, dict):
                rows.append([peer, str(codec), *(human_bytes(_count(places.get(where)))
                                                 for where in ("disk", "wire", "compress"))])
    return rows


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def failure_rows(peers: dict[str, dict[str, Any]],
                 limit: int = MAX_FAILURES_SHOWN) -> list[list[str]]:
    """Newest first, every peer's recent failures together."""
    events = [(f.get("at", 0.0), peer, f.get("what", ""))
              for peer, status in peers.items()
              for f in status.get("counters", {}).get("recent_failures", [])]
    events.sort(key=lambda e: e[0], reverse=True)
    return [[clock(at), peer, what] for at, peer, what in events[:limit]]


def format_table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def human_bytes(n: int | float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def used_of_cap(tier: dict[str, Any]) -> str:
    cap = tier.get("bytes_cap", 0)
    return f"{human_bytes(tier.get('bytes_used', 0))}/{human_bytes(cap)}" if cap else "-"


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def transports_summary(transports: dict[str, str]) -> str:
    """{"peer": "tcp", ...} as "shm:1 tcp:2"; "-" when not connected to anyone."""
    counts: dict[str, int] = {}
    for kind in transports.values():
        counts[kind] = counts.get(kind, 0) + 1
    return " ".join(f"{k}:{n}" for k, n in sorted(counts.items())) or "-"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def _all_members(peers: dict[str, dict[str, Any]], gone_too: bool = False) -> list[str]:
    """Peers answering or listed as members; with `gone_too`, the dead and left as well."""
    members = set(peers)
    for status in peers.values():
        members.update(status.get("members", []))
        if gone_too and isinstance(status.get("member_states"), dict):
            members.update(status["member_states"])
    return sorted(members)


def _ring_share(peer: str, peers: dict[str, dict[str, Any]]) -> float | None:
    """The peer's share as it sees the ring, else as any other peer does."""
    own = peers.get(peer, {}).get("ring_shares", {})
    if peer in own:
        return own[peer]
    for status in peers.values():
        if peer in status.get("ring_shares", {}):
            return status["ring_shares"][peer]
    return None
