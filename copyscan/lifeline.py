"""Worker processes that end with the process that started them.

A decode worker whose parent is killed (kill -9, the OOM killer) would otherwise run on until
its queue times out, holding memory and a core. On Linux the kernel kills it the moment the
parent goes (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread watches the parent's pid.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL = 0.2  # seconds between looks at the parent, where prctl is not available


def die_with_parent(parent_pid: int) -> None:
    """Call first thing in a child process: it gets SIGKILL as soon as `parent_pid` exits."""
    if not _set_parent_death_signal():
        threading.Thread(target=_watch, args=(parent_pid,), name="copyscan-lifeline", daemon=True).start()
    # The parent may have died before the signal was armed: then the child was already re-parented.
    if os.getppid() != parent_pid:
        os._exit(1)


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL)
    os._exit(1)


__all__ = ["die_with_parent"]
