"""The few libc calls the kernel oracle makes on real memory (mmap, munmap, madvise), through ctypes, with the
constants they take. Why not Python's mmap module: madvise(MADV_MERGEABLE) must apply to exact page ranges of
one mapping, munmap must be able to punch holes, and the addresses must be raw for memmove."""

from __future__ import annotations

import ctypes
import mmap
import os

PAGE_SIZE = mmap.PAGESIZE
MADV_DONTNEED, MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_NOHUGEPAGE = 4, 12, 13, 15
PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
MAP_FAILED = ctypes.c_void_p(-1).value
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mmap_anon(length: int, hint: int | None = None) -> int:
    """A private anonymous read-write mapping of `length` bytes: its address (at `hint` if that range is free:
    a hint, not MAP_FIXED, so it never replaces a mapping)."""
    addr = _libc.mmap(hint, length, PROT_RW, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return int(addr)


def munmap(addr: int, length: int) -> None:
    _check(_libc.munmap(addr, length), "munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    _check(_libc.madvise(addr, length, advice), f"madvise({advice})")


def madvise_return(addr: int, length: int, advice: int) -> int:
    """madvise as a workload records it: 0, or -errno (over a hole the kernel advises the mapped parts, -ENOMEM)."""
    return 0 if _libc.madvise(addr, length, advice) == 0 else -ctypes.get_errno()


def mlock(addr: int, length: int, lock: bool) -> None:
    """mlock(2) (faults the range in, as a write for private writable memory) or munlock(2)."""
    if lock:
        _check(_libc.mlock(addr, length), "mlock")
    else:
        _check(_libc.munlock(addr, length), "munlock")


def mremap_fixed(addr: int, length: int, new_addr: int) -> None:
    """mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr): move the pages, unmapping whatever
    was at new_addr first."""
    ret = _libc.mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)
    if ret in (None, MAP_FAILED) or int(ret) != new_addr:
        raise OSError(ctypes.get_errno(), f"mremap to {new_addr:#x} failed")


def madvise_hint(addr: int, length: int, advice: int) -> None:
    """madvise for advice that is only a hint, whose failure changes nothing (MADV_NOHUGEPAGE without THP)."""
    _libc.madvise(addr, length, advice)
