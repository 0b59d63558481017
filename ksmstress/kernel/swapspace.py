"""A swap file for the kernel oracle's `pageout` workloads: made, switched on for the run and taken away after.

MADV_PAGEOUT of an anonymous page needs a swap area. The run makes its own (a file of zeros with a version-1 swap
header, as mkswap writes it) and switches it on at the highest priority, so its pages go there and not to an area
the machine has (a zram area would write synchronously and free the page at once, where a file's write is still
in flight and the page stays in the swap cache, as pageout.py assumes). The file sits at a fixed path: a run that
was SIGKILLed leaves it, and the next run switches it off and removes it first. Like the KSM knobs, this is global
and runs under the oracle's lock.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .. import procs
from . import libc

NAME = "ksmstress-kernel.swap"
DIRS = (Path("/var/tmp"), Path("/tmp"))  # on a disk file system: tmpfs refuses swap files
PRIORITY = 32767  # above any area the machine has
MIN_PAGES = 1024
MAGIC = b"SWAPSPACE2"


def path() -> Path:
    for d in DIRS:
        if d.is_dir() and os.access(d, os.W_OK):
            return d / NAME
    return Path(NAME).absolute()


def header(pages: int) -> bytes:
    """Page 0 of a swap area (union swap_header): 1024 boot bytes, version 1, last_page, no bad pages, then the
    magic in the page's last 10 bytes."""
    page = bytearray(libc.PAGE_SIZE)
    page[1024:1036] = (1).to_bytes(4, "little") + (pages - 1).to_bytes(4, "little") + bytes(4)
    page[-len(MAGIC):] = MAGIC
    return bytes(page)


def _remove(p: Path) -> None:
    """Switch the area off if it is on (EINVAL: it is not) and delete the file."""
    with contextlib.suppress(OSError):
        libc.swapoff(str(p))
    p.unlink(missing_ok=True)


def recover() -> bool:
    """Take away a swap file that a killed run left; True if there was one."""
    p = path()
    if not p.exists():
        return False
    _remove(p)
    return True


@contextlib.contextmanager
def swap_area(pages: int) -> Iterator[str]:
    """A swap file of at least `pages` pages, switched on for the block; yields "" when it is on, else why it
    could not be (the kernel refused swapon, no disk space: the workloads that need it are skipped)."""
    recover()
    p = path()
    pages = max(pages + 1, MIN_PAGES)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header(pages))
            zeros = bytes(libc.PAGE_SIZE * 256)
            left = pages - 1
            while left > 0:  # real blocks: a swap file must have no holes
                n = min(left, 256)
                os.write(fd, zeros[: n * libc.PAGE_SIZE])
                left -= n
            os.fsync(fd)
        finally:
            os.close(fd)
        libc.swapon(str(p), PRIORITY)
    except OSError as e:
        p.unlink(missing_ok=True)
        yield f"no swap area: {e.strerror if e.filename is None else e}"
        return
    try:
        yield ""
    finally:
        with procs.blocked():  # Ctrl-C and SIGTERM wait until the area is off and the file gone
            _remove(p)


def wait_writeback(timeout: float) -> None:
    """Until no page is under writeback (/proc/vmstat nr_writeback), so a paged-out page's write has ended before
    the next action: a second pageout of a page still under writeback would leave it mapped. Gives up after
    `timeout` seconds (other writers on the machine): the figures then tell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/vmstat") as f:
            busy = any(line.startswith("nr_writeback ") and line.split()[1] != "0" for line in f)
        if not busy:
            return
        procs.check_interrupt()
        time.sleep(0.001)
