"""The process's open-files limit: a listener cannot hold more connections than the process may
have file descriptors, and many systems start processes with a soft limit of 1024."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Descriptors besides client connections: upstream connections, registry sessions, the HTTP
# listeners, log files.
_HEADROOM = 1024


def raise_open_files_limit(max_connections: int, listeners: int = 2) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    Logs the change, and a warning when even the hard limit is below what ``max_connections`` on
    every listener needs (beyond it, accepting a connection fails instead of being refused cleanly).
    """
    try:
        import resource
    except ImportError:  # not a Unix: nothing to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections * listeners + _HEADROOM
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning(
                "cannot raise the open-files limit (RLIMIT_NOFILE) from %d to %d: %s", soft, target, exc
            )
        else:
            log.info("raised the open-files limit (RLIMIT_NOFILE) from %d to %d", soft, target)
            soft = target
    if soft < needed:
        log.warning(
            "the open-files limit (RLIMIT_NOFILE) is %d, below the %d that limits.max_connections=%d on "
            "%d listeners needs: raise the hard limit (ulimit -Hn, systemd LimitNOFILE, docker --ulimit) "
            "or lower limits.max_connections",
            soft, needed, max_connections, listeners,
        )  # fmt: skip
    return soft
