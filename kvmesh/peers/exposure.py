"""Start-time check: nothing reachable off this host without the mesh secret.

Without KVMESH_SECRET, anyone who can reach a peer's mesh port can join the
mesh, pull and advertise KV and gossip, and anyone who can reach its control
API can read and clear it. On loopback only local users can (see
SECURITY.md); off loopback that is refused unless the operator sets
KVMESH_INSECURE=1, and then every start logs a WARNING naming what is open.

`exposures` and `check_exposure` are pure functions of the config (tested
from a table); `enforce_exposure` is the one call a peer makes before it
binds anything. A host counts as off loopback unless it is a loopback
address or "localhost": wildcards ("", 0.0.0.0, ::) and names, which are not
resolved here, count as off loopback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kvmesh.config import KvmeshConfig
from kvmesh.errors import ConfigError
from kvmesh.peers.control_guard import is_loopback_host

log = logging.getLogger(__name__)

INSECURE_SETTING = "KVMESH_INSECURE"


@dataclass(frozen=True, slots=True)
class Exposure:
    """One listener bound off loopback."""

    setting: str  # the variable that placed it, e.g. KVMESH_HOST
    value: str  # its value, e.g. 0.0.0.0
    what: str  # what a stranger reaching it could use


def exposures(config: KvmeshConfig) -> tuple[Exposure, ...]:
    """The listeners this config binds off loopback, mesh listener first."""
    found = []
    if not is_loopback_host(config.mesh.host):
        found.append(Exposure("KVMESH_HOST", config.mesh.host,
                              "the mesh listener (TCP data path and UDP gossip)"))
    if config.control.enabled and not is_loopback_host(config.control.host):
        found.append(Exposure("KVMESH_CONTROL_HOST", config.control.host, "the HTTP control API"))
    return tuple(found)


def check_exposure(config: KvmeshConfig) -> tuple[str, ...]:
    """The warnings to log at this start (none when safe).

    Raises ConfigError, saying what to set, when a listener is off loopback
    without a mesh secret and the operator did not set KVMESH_INSECURE=1.
    """
    exposed = exposures(config)
    if config.mesh.secret or not exposed:
        return ()
    names = " and ".join(f"{e.what} ({e.setting}={e.value})" for e in exposed)
    if not config.insecure:
        raise ConfigError(
            f"refusing to start: {names} would be reachable off this host and KVMESH_SECRET is "
            "not set, so anyone who reaches it could join the mesh, read or serve KV and drive "
            "the control API. Set KVMESH_SECRET to the same long random value on every member "
            "(e.g. `openssl rand -hex 32`), or bind to 127.0.0.1, or set "
            f"{INSECURE_SETTING}=1 to run unauthenticated anyway")
    return tuple(f"INSECURE ({INSECURE_SETTING}=1): {e.what} ({e.setting}={e.value}) is reachable "
                 "off this host with no mesh secret: anyone who reaches it is trusted as a member. "
                 "Set KVMESH_SECRET on every member to close it" for e in exposed)


def enforce_exposure(config: KvmeshConfig) -> None:
    """`check_exposure`, with each warning logged. Call at every start, before binding."""
    for warning in check_exposure(config):
        log.warning(warning)
