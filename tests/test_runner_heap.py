"""runner/heap.py: full-size buffers are reused between images instead of page-faulted again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gradcam_cli.runner.heap import keep_large_blocks

# Allocates and frees a 48 MB buffer (a 12 MP float32 CAM) ten times and prints the page faults it took.
FAULTS = """
import resource, sys
import numpy as np
from gradcam_cli.runner.heap import keep_large_blocks
if sys.argv[1] == "keep":
    assert keep_large_blocks()
np.ones(12_000_000, dtype=np.float32)  # the first one faults in either case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    np.ones(12_000_000, dtype=np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_full_size_buffers_are_reused_not_faulted_again():
    default, kept = faults("default"), faults("keep")
    # glibc's default unmaps each 48 MB block on free, so each new one faults again: at least once per
    # 2 MB page even with transparent huge pages (24 per block), ~500-1,000 per block with the kernel's fault-around
    assert default >= 10 * 24
    assert kept < default / 20


def test_returns_whether_the_setting_was_taken():
    assert keep_large_blocks() is sys.platform.startswith("linux")
