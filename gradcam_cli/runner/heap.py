"""Large buffers kept in the heap between images instead of handed back to the kernel after each one.

glibc serves blocks above its mmap threshold (at most 32 MB unless told otherwise) with a fresh mmap() and
unmaps them on free, so every 12 MP image's original, CAM and overlay (36-48 MB each) is page-faulted
and zeroed by the kernel again: ~45 ms of kernel time per image in a render worker, a fifth of its work,
and as much again in the main process for the model's activations (benchmarks/RESULTS.md). Raising the
mmap and trim thresholds keeps such blocks in the heap for the next image; what a process retains is
bounded by its own peak, which recurs with every image anyway. The setting belongs to the process and
forked workers inherit it; outside glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
KEEP_BLOCKS_UP_TO = 256 << 20  # a 24 MP float32 CAM is 96 MB; above this an image is rare enough to mmap


def keep_large_blocks(limit: int = KEEP_BLOCKS_UP_TO) -> bool:
    """Ask glibc to reuse freed blocks up to `limit` bytes; True when it took the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    # trim only beyond twice the largest kept block, or the heap top would be handed back after each image
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * limit))
