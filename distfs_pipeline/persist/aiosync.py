"""One `fdatasync` in flight while the caller goes on: the kernel's own asynchronous fsync, no thread.

Why (issue 11, `runtime.durability=pipelined`): `os.fdatasync` in a worker thread overlaps badly
with a CPU-bound caller. The syscall releases the GIL, but when it returns the worker must take the
GIL back to finish its work, and the caller (Python code checking the next round) hands it over only
at its next blocking call or after the switch interval; with a `ThreadPoolExecutor` (a Future, a
queue and a condition per round) that is several handoffs a round. Linux AIO's `IOCB_CMD_FDSYNC`
(Linux >= 4.18) runs the same fdatasync in a kernel worker: `io_submit` returns at once,
`io_getevents` collects the result, and no Python code runs in between, so the GIL is never
involved. Measured in the app (`benchmarks/bench_durability.py`'s pipelined run, best of 4, one
process, a 2-core VM): kernel AIO 293 to 299 us a round, a bare helper thread 314 to 334 us, the
executor 347 to 354 us (io_uring's IORING_OP_FSYNC was tried too: slower than AIO there).

What it guarantees is exactly `fdatasync(fd)`'s: when `wait` returns without raising, the data
written to the file before `start` (and the size needed to read it back) is on stable storage.
Where Linux AIO is unavailable (another OS or architecture, a seccomp filter, `fs.aio-max-nr`
exhausted, a file system whose files refuse it), the same calls run `os.fdatasync` in a helper
thread instead; the caller cannot tell but by `backend`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import sys
import threading
from typing import Any

IOCB_CMD_FDSYNC = 3
# (io_setup, io_destroy, io_getevents, io_submit) per machine (asm-generic numbers on arm64).
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2), "arm64": (0, 1, 4, 2)}


class _Iocb(ctypes.Structure):
    """`struct iocb` (linux/aio_abi.h), little-endian layout: 64 bytes."""

    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    """`struct io_event`: 32 bytes."""

    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _KernelAio:
    """An AIO context of one slot: at most one fdatasync in flight."""

    def __init__(self) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or numbers is None or sys.byteorder != "little":
            raise OSError(errno.ENOSYS, "Linux AIO is not available here")
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self._libc = ctypes.CDLL(None, use_errno=True)  # a CDLL call releases the GIL
        self._libc.syscall.restype = ctypes.c_long
        self._ctx = ctypes.c_ulong(0)
        if self._libc.syscall(ctypes.c_long(self._setup), ctypes.c_long(1), ctypes.byref(self._ctx)) != 0:
            raise OSError(ctypes.get_errno(), "io_setup")
        self._iocb = _Iocb(aio_lio_opcode=IOCB_CMD_FDSYNC)
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._event = _IoEvent()
        self._pid = os.getpid()
        self._pending = False  # submitted, its event not yet reaped (then the context is never reused)

    def submit(self, fd: int) -> None:
        self._iocb.aio_fildes = fd
        done = self._libc.syscall(ctypes.c_long(self._submit), self._ctx, ctypes.c_long(1), self._iocbs)
        if done != 1:
            raise OSError(ctypes.get_errno() if done < 0 else errno.EAGAIN, "io_submit (fdatasync)")
        self._pending = True

    def reap(self) -> None:
        """Block until the one submitted fdatasync completes; its failure as `OSError`."""
        while True:
            got = self._libc.syscall(
                ctypes.c_long(self._getevents),
                self._ctx,
                ctypes.c_long(1),
                ctypes.c_long(1),
                ctypes.byref(self._event),
                None,
            )
            if got == 1:
                self._pending = False
                break
            err = ctypes.get_errno()
            if got < 0 and err != errno.EINTR:
                raise OSError(err, "io_getevents (fdatasync)")
        if self._event.res < 0:
            raise OSError(-self._event.res, os.strerror(-self._event.res))

    def close(self) -> None:
        """Keep the idle context for the next journal of this process instead of `io_destroy`,
        which waits for an RCU grace period (37 ms measured: more than a short run's rounds). The
        kernel frees it at exit; a forked child never reuses it (contexts belong to the parent), and
        neither does anyone a context whose request was never reaped (a wait cut short by a second
        Ctrl-C): its late event would be taken for the next caller's."""
        if self._ctx.value and self._pid == os.getpid() and not self._pending:
            _IDLE.append(self)


_IDLE: list[_KernelAio] = []


def _kernel_aio() -> _KernelAio:
    """An idle context of this process, else a new one (`OSError` where there is no Linux AIO)."""
    while _IDLE:
        ctx = _IDLE.pop()
        if ctx._pid == os.getpid():
            return ctx
    return _KernelAio()


class _ThreadSync:
    """The fallback: `os.fdatasync` in one helper thread, started on first use."""

    def __init__(self) -> None:
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._fd = -1
        self._error: OSError | None = None
        self._thread: threading.Thread | None = None

    def _work(self) -> None:
        while True:
            self._go.acquire()
            if self._fd < 0:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as err:
                self._error = err
            self._done.release()

    def submit(self, fd: int) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="distfs-fdatasync", daemon=True)
            self._thread.start()
        self._fd, self._error = fd, None
        self._go.release()

    def reap(self) -> None:
        self._done.acquire()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        if self._thread is not None:
            self._fd = -1
            self._go.release()
            self._thread.join()
            self._thread = None


class AsyncDatasync:
    """`start(fd)` an fdatasync, go on, `wait()` for it; at most one in flight.

    `start` while one is in flight, or `wait` with none, is a `RuntimeError` (a caller's bug that
    would otherwise lose track of what is durable).
    """

    def __init__(self, prefer_kernel: bool = True) -> None:
        self._impl: Any = None
        if prefer_kernel:
            with contextlib.suppress(OSError, AttributeError):
                self._impl = _kernel_aio()
        if self._impl is None:
            self._impl = _ThreadSync()
        self.in_flight = False
        self.completed = 0  # fdatasyncs that have returned (successfully or not)

    @property
    def backend(self) -> str:
        return "kernel-aio" if isinstance(self._impl, _KernelAio) else "thread"

    def _live(self) -> Any:
        if self._impl is None:
            raise RuntimeError("AsyncDatasync used after close")
        return self._impl

    def start(self, fd: int) -> None:
        if self.in_flight:
            raise RuntimeError("AsyncDatasync.start with an fdatasync in flight")
        try:
            self._live().submit(fd)
        except OSError as err:
            if not isinstance(self._impl, _KernelAio) or err.errno not in _FALL_BACK_ON:
                raise
            self._impl.close()  # this file (or the system) refuses AIO fsync: a thread does it
            self._impl = _ThreadSync()
            self._impl.submit(fd)
        self.in_flight = True

    def wait(self) -> None:
        if not self.in_flight:
            raise RuntimeError("AsyncDatasync.wait with no fdatasync in flight")
        self.in_flight = False
        try:
            self._live().reap()
        finally:
            self.completed += 1

    def close(self) -> None:
        """Wait for one in flight (its error is the caller's to have seen), then release the
        context or the thread; once (a second call does nothing)."""
        if self._impl is None:
            return
        try:
            if self.in_flight:
                with contextlib.suppress(OSError):
                    self.wait()
        finally:
            impl, self._impl = self._impl, None
            impl.close()


_FALL_BACK_ON = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EAGAIN, errno.EPERM}
