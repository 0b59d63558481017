"""The few libc calls the kernel oracle makes on real memory (mmap, munmap, madvise, mlock, mremap; swapon and
swapoff for its swap file), through ctypes, with the constants they take. Why not Python's mmap module:
madvise(MADV_MERGEABLE) must apply to exact page ranges of one mapping, munmap must be able to punch holes, and
the addresses must be raw for memmove."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os

PAGE_SIZE = mmap.PAGESIZE
MADV_DONTNEED, MADV_MERGEABLE, MADV_UNMERGEABLE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 4, 12, 13, 15, 21
SWAP_FLAG_PREFER, SWAP_FLAG_PRIO_MASK = 0x8000, 0x7FFF
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
_libc.vmsplice.restype = ctypes.c_ssize_t
_libc.vmsplice.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
_libc.swapon.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.swapoff.argtypes = [ctypes.c_char_p]
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


def swapon(path: str, priority: int) -> None:
    """swapon(2) of a prepared swap file at `priority` (SWAP_FLAG_PREFER), so it is used before any other area."""
    _check(_libc.swapon(path.encode(), SWAP_FLAG_PREFER | (priority & SWAP_FLAG_PRIO_MASK)), f"swapon {path}")


def swapoff(path: str) -> None:
    """swapoff(2): every page in the area is read back first (try_to_unuse)."""
    _check(_libc.swapoff(path.encode()), f"swapoff {path}")


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


F_SETPIPE_SZ = 1031
PIN_CHUNK = 256  # pages per pipe (F_SETPIPE_SZ of 1 MiB: /proc/sys/fs/pipe-max-size's default)


def pin_pages(addrs: list[int]) -> list[int]:
    """Take a page reference on each present page at `addrs` (vmsplice(2) into pipes: get_user_pages for reading,
    so no fault and no COW); the references go when the returned descriptors are closed."""
    fds: list[int] = []
    try:
        for i in range(0, len(addrs), PIN_CHUNK):
            chunk = addrs[i : i + PIN_CHUNK]
            r, w = os.pipe2(os.O_CLOEXEC)
            fds += [r, w]
            if len(chunk) > 16:  # a pipe has 16 slots by default
                fcntl.fcntl(w, F_SETPIPE_SZ, len(chunk) * PAGE_SIZE)
            iov = (_Iovec * len(chunk))(*[(a, PAGE_SIZE) for a in chunk])
            done = 0
            while done < len(chunk) * PAGE_SIZE:
                n = _libc.vmsplice(w, ctypes.byref(iov, done // PAGE_SIZE * ctypes.sizeof(_Iovec)),
                                   len(chunk) - done // PAGE_SIZE, 0)
                if n <= 0:
                    raise OSError(ctypes.get_errno(), "vmsplice failed")
                done += n
    except BaseException:
        unpin(fds)
        raise
    return fds


def unpin(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
