"""Process-wide settings that keep a long-running app's memory flat (``app.py`` applies them at launch).

Measured with ``python -m benchmarks.load`` (8 users on ``/register``): the server's RSS kept
growing after warm-up while the Python objects it held did not (``tracemalloc``). The growth was
glibc's: after a large buffer (an image, a field) is freed, glibc raises its mmap threshold to that
size, so later buffers up to that size come from the heaps of the worker threads' arenas (up to
eight per core), where freed space is fragmented and kept. Fixing the threshold low would hand
those buffers back, but every megabyte-sized tensor of an optimisation would then be mapped and
faulted in afresh (a registration ran several times slower). Instead :func:`steady_memory` keeps
as many arenas as there are cores and asks glibc every few seconds to give back the free pages of
all its heaps (``malloc_trim``, milliseconds).

The rest was Python's: each request leaves reference cycles behind (plotly defines a class inside
a helper it calls for every property set, ~340 classes per ``/register``, each a cycle), which
only a full collection frees, and full collections were rare and slow because they scanned the
~480,000 objects of the loaded libraries and model each time. :func:`steady_memory` freezes what
exists at start-up (``gc.freeze``: never scanned again), after which Python's full collections run
every few requests in milliseconds, and collects once more before each trim. The load test's
results (``benchmarks/results/``) show the server's RSS after warm-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading

__all__ = ["TRIM_EVERY_S", "steady_memory", "trim"]

#: How often the free pages of the C heaps are given back to the OS.
TRIM_EVERY_S = 5.0
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc has both; musl and macOS do not)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def trim() -> bool:
    """Give the free pages of every C heap back to the OS now; False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def steady_memory(arenas: int | None = None, every_s: float = TRIM_EVERY_S) -> threading.Thread | None:
    """Freeze what Python holds now (``gc.freeze``), allow at most ``arenas`` malloc arenas (default:
    one per core), and collect and :func:`trim` every ``every_s`` seconds in a daemon thread
    (returned). Without glibc only the freeze is done, and None returned.

    Call it once start-up is done (libraries imported, model loaded) and before the server's worker
    threads start: arenas already made stay.
    """
    gc.collect()
    gc.freeze()
    libc = _glibc()
    if libc is None:
        return None
    libc.mallopt(_M_ARENA_MAX, arenas or len(os.sched_getaffinity(0)))
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            gc.collect()
            libc.malloc_trim(0)

    thread = threading.Thread(target=loop, name="regcore-malloc-trim", daemon=True)
    thread.start()
    return thread
