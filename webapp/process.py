"""Process-wide settings that keep a long-running app's memory flat (``app.py`` applies them at start).

Measured with ``python -m benchmarks.load`` (8 users on ``/register``): the server's RSS kept
growing after warm-up, while the Python objects it held did not (``tracemalloc``). The growth was
glibc's: after a large buffer (an image, a field) is freed, glibc raises its mmap threshold to that
size, so later buffers of that size come from the heaps of the many worker threads' arenas, where
freed space is fragmented and never returned. A fixed threshold (glibc's own default, 128 KiB)
turns that adjustment off: large buffers are mapped and unmapped again. The load test's results
(``benchmarks/results/``) show RSS with and without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["MMAP_THRESHOLD", "fixed_mmap_threshold"]

#: Buffers of at least this many bytes get memory of their own from the OS, returned when freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def fixed_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt (musl, macOS)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
