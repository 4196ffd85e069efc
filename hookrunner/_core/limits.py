"""The process's open-file limit: raised at start as far as the hard limit allows.

Every followed call holds a stream, and every plugin delivery and every connection to the server holds a file
descriptor; at the common soft limit of 1,024 a flood of idle connections to the server leaves none for the
streams, which then fail to reconnect.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_file_limit"]

log = logging.getLogger("hookrunner.limits")

MAX_OPEN_FILES = 1024 * 1024  # the target when the hard limit is unlimited (Linux's default fs.nr_open)
LOW = 4096  # below this, a limit that cannot be raised is worth a warning


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``MAX_OPEN_FILES``); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:  # e.g. macOS refuses more than its kern.maxfilesperproc
            log.debug("open-file limit: cannot raise %d to %d: %s", soft, wanted, error)
        else:
            log.info("open-file limit raised from %d to %d", soft, wanted)
            return soft, wanted
    if soft < LOW:
        log.warning(
            "open-file limit is %d and cannot be raised (hard limit %s): a flood of connections can leave none "
            "for the calls' streams; raise it (LimitNOFILE= in a systemd unit, ulimit -n in a shell)",
            soft, "unlimited" if hard == resource.RLIM_INFINITY else hard,
        )  # fmt: skip
    return soft, soft
