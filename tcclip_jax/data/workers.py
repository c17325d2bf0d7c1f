"""What every data worker process (grain's, the tfds packer's) does first.

A Ctrl-C at a terminal goes to the whole process group: to the workers as well as to the command.
Workers ignore it, and the command stops them when it has saved what it must, so no traceback
comes from each worker's KeyboardInterrupt.
"""

from __future__ import annotations

import signal


def leave_interrupts_to_the_parent(*_) -> None:
    """Ignore SIGINT in this (worker) process; takes and ignores grain's (index, count)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
