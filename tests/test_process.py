"""The app's process settings that keep its memory flat under load (webapp/process.py, SESSIONS_KEPT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import webapp
from webapp import common

ROOT = Path(__file__).resolve().parent.parent

# Frees large buffers made from the heap after glibc raised its mmap threshold, then reports how
# much of them the process still holds.
HELD_AFTER_FREE = """
import importlib.util
import sys
import numpy as np

spec = importlib.util.spec_from_file_location("process", sys.argv[2])  # webapp/process.py alone, without gradio
process = importlib.util.module_from_spec(spec)
spec.loader.exec_module(process)

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "fixed":
    assert process.fixed_mmap_threshold()
big = np.ones(24 * 2**20, np.uint8)
del big  # unmapped; glibc now serves buffers under 24 MB from its heap
before = rss_mb()
buffers = [np.ones(6 * 2**20, np.uint8) for _ in range(8)]
pin = np.ones(256 * 2**10, np.uint8)  # a block after them keeps the heap from shrinking
del buffers
print(rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_fixed_mmap_threshold_gives_freed_buffers_back():
    held = {}
    for mode in ("dynamic", "fixed"):
        command = [sys.executable, "-c", HELD_AFTER_FREE, mode, str(ROOT / "webapp" / "process.py")]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
        held[mode] = float(run.stdout)
    assert held["dynamic"] > 30 and held["fixed"] < 5, held  # 48 MB freed: kept by the heap, or given back


def test_gradio_keeps_a_bounded_number_of_sessions():
    assert webapp.launch_options()["state_session_capacity"] == common.SESSIONS_KEPT <= 1000
