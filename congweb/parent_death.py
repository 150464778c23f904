"""A child that dies with its parent (Linux: prctl(PR_SET_PDEATHSIG)), for processes that must not outlive
whoever started them: the launcher's children (congweb.supervisor) and the gunicorn master's workers
(congweb.web)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def exit_with_parent(parent: int) -> None:
    """In a child: ask the kernel for SIGKILL when its parent ``parent`` dies (Linux only; elsewhere nothing).

    The kernel sends the signal when the *thread* that forked the child exits: the launcher and the gunicorn
    master fork from their main thread only, which lives as long as the process.
    """
    if not sys.platform.startswith("linux"):
        return
    if libc().prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died between fork and prctl: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)
