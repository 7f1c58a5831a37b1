"""The app's budgets, in process: one CPU budget for every heavy event, a time budget per request,
outputs proportional to the work, and caches cleaned within minutes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import regcore
import webapp
from webapp import common, compare_tab, learn_tab, register_tab

ROOT = Path(__file__).resolve().parent.parent
SOURCE, TARGET = ROOT / "examples" / "camera_source.png", ROOT / "examples" / "camera_target.png"
HEAVY_ENDPOINTS = {"register", "deform", "walkthrough", "train", "compare"}


class _NoProgress:
    def __call__(self, *args, **kwargs) -> None:
        pass

    def tqdm(self, iterable, *args, **kwargs):
        return iterable


@pytest.fixture(scope="module")
def demo() -> gr.Blocks:
    return webapp.build_demo()


@pytest.fixture
def outputs_here(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(common, "OUTPUT_ROOT", tmp_path / "results")
    return tmp_path / "results"


def test_every_heavy_event_shares_one_concurrency_group_sized_to_the_cores(demo):
    heavy = [fn for fn in demo.fns.values() if fn.queue]
    assert {fn.api_name for fn in heavy} >= HEAVY_ENDPOINTS
    assert all(fn.concurrency_id == "cpu" and fn.concurrency_limit == common.CPU_WORKERS for fn in heavy), [
        (fn.api_name, fn.concurrency_id, fn.concurrency_limit) for fn in heavy
    ]
    assert len(os.sched_getaffinity(0)) == common.CPU_WORKERS
    assert demo._queue.max_size == common.QUEUE_SIZE and 0 < common.QUEUE_SIZE <= 8 * common.CPU_WORKERS


def test_loading_the_page_takes_no_worker_and_its_pair_is_computed_once(demo, monkeypatch):
    (load,) = [fn for fn in demo.fns.values() if any(trigger == "load" for _, trigger in fn.targets)]
    assert not load.queue  # outside the queue: a page load never waits for, nor holds, a worker
    calls: list[tuple] = []
    monkeypatch.setattr(learn_tab, "_deform", lambda *args: calls.append(args) or ("outputs", *args))
    learn_tab._first_pair_cached.cache_clear()
    first = load.fn(None)
    assert load.fn(None) is first and len(calls) == 1
    learn_tab._first_pair_cached.cache_clear()


def test_gradio_cache_and_result_folders_are_cleaned_within_minutes(demo, outputs_here):
    assert demo.delete_cache == (common.CLEAN_EVERY_S, common.OUTPUT_MAX_AGE_S)
    assert common.CLEAN_EVERY_S <= 60 and common.OUTPUT_MAX_AGE_S <= 600
    old = common.output_dir()
    (old / "flow.npy").write_bytes(b"x")
    past = time.time() - common.OUTPUT_MAX_AGE_S - 1
    os.utime(old, (past, past))
    common._last_cleanup = 0.0
    fresh = common.output_dir()
    assert fresh.is_dir() and not old.exists()


def _flat_blocks(side: int, seed: int = 0) -> np.ndarray:
    """A large image of flat blocks: a few KB as PNG, many megapixels once decoded."""
    blocks = (np.random.default_rng(seed).integers(0, 8, (side // 64, side // 64)) * 32).astype(np.uint8)
    return np.kron(blocks, np.ones((64, 64), np.uint8))


def test_a_large_pair_gives_files_at_the_registered_size(tmp_path, outputs_here):
    assert regcore.available_models(), "the shipped checkpoints are missing"
    image = _flat_blocks(1536)
    Image.fromarray(image).save(tmp_path / "source.png")
    Image.fromarray(np.roll(image, (12, -8), axis=(0, 1))).save(tmp_path / "target.png")
    out = register_tab.register_pair(str(tmp_path / "source.png"), str(tmp_path / "target.png"), method="net", progress=_NoProgress())
    warped, summary, files = out[0], out[7], out[8]
    by_name = {Path(f).name: Path(f) for f in files}
    assert Image.open(warped).size == (512, 512)
    flow = np.load(by_name["flow.npy"])
    assert flow.shape == (2, 512, 512) and flow.dtype == np.float32
    metrics = json.loads(by_name["metrics.json"].read_text())
    assert metrics["source_shape"] == [1536, 1536] and metrics["field_scale"] == pytest.approx([1535 / 511] * 2)
    assert metrics["after"]["local_ncc"] > metrics["before"]["local_ncc"]
    assert "registered size (the source is 1536x1536)" in summary
    written = sum(f.stat().st_size for f in outputs_here.rglob("*") if f.is_file())
    assert written < 4_000_000  # a full-size float32 field alone would be 19 MB


@pytest.mark.parametrize("endpoint", ["register", "deform", "walkthrough", "compare"])
def test_every_endpoint_stops_with_a_message_when_its_budget_is_spent(endpoint, monkeypatch, outputs_here):
    pair = regcore.load_image(SOURCE), regcore.load_image(TARGET)
    monkeypatch.setattr(common, "REQUEST_TIMEOUT_S", 1e-6)
    calls = {
        "register": lambda: register_tab.register_pair(str(SOURCE), str(TARGET), method="net", progress=_NoProgress()),
        "deform": lambda: learn_tab.learn_deform("camera", 6, 4, 0, None),
        "walkthrough": lambda: learn_tab.learn_steps(pair, None),
        "compare": lambda: compare_tab.compare(str(SOURCE), str(TARGET), None, progress=_NoProgress()),
    }
    with pytest.raises(gr.Error) as info:
        calls[endpoint]()
    message = str(info.value)
    assert "\n" not in message and ("took longer than" in message or "budget" in message), message


def test_live_training_stops_and_says_so_when_its_budget_is_spent(monkeypatch):
    monkeypatch.setattr(common, "TRAIN_TIMEOUT_S", 1e-6)
    updates = list(learn_tab.learn_train(600, "hybrid", progress=_NoProgress()))
    assert len(updates) == 1  # the first step, then the stop
    assert "stopped: live training is limited to" in updates[-1][2]


def test_pictures_are_returned_as_files_of_their_own(outputs_here):
    """Handed the same array twice at once, Gradio writes one file by content in place, and a client
    could fetch it half-written (the load test saw it on /deform): each request gets its own files."""
    first, second = (learn_tab.learn_deform("camera", 6, 4, 0, None) for _ in range(2))
    assert first[0] != second[0] and first[1] != second[1]
    for path in (*first[:2], *second[:2]):
        assert Path(path).is_relative_to(outputs_here) and Image.open(path).size == (learn_tab.LEARN_SIZE,) * 2
