"""Counters of one SWIM engine, read by status pages and metrics (`Swim.stats`).

One `SwimStats` per engine; its parts increment the fields on the clock's
thread, readers take a copy (`dataclasses.asdict`) on the same thread.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SwimStats:
    sent: int = 0
    received: int = 0
    malformed: int = 0  # undecodable or out-of-cap datagrams, dropped
    misdirected: int = 0  # pings meant for another peer id at our address
    probes: int = 0
    probe_failures: int = 0
    suspicions: int = 0  # suspicions started here (own probes or gossip)
    refutations: int = 0  # times we bumped our incarnation to answer an accusation
    claims_refused: int = 0  # claims whose incarnation rose past the bounds of `states`, dropped
    catch_ups: int = 0  # older-life accusations answered with alive at their incarnation + 1
    members_refused: int = 0  # claims about members we never heard of, past MAX_MEMBERS
    relays_refused: int = 0  # PING_REQs dropped: MAX_OUTSTANDING probes and relays pending
    declared_dead: int = 0  # suspicions that expired here
    syncs_refused_source: int = 0  # state exchanges not made: their source's budget was spent
    syncs_refused_total: int = 0  # state exchanges not made: every source's budget was spent
