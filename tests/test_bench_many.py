"""benchmarks/many.py runs: its pairs, one register-many run parsed, and the forward-pass rows (tiny sizes)."""

from __future__ import annotations

import csv

from benchmarks.many import forward_rows, run_config, write_pairs


def test_the_throughput_benchmark_runs_on_a_tiny_set(tmp_path):
    pairs = write_pairs(tmp_path, 3, 32)
    with pairs.open() as f:
        assert len(list(csv.DictReader(f))) == 3
    result = run_config(pairs, tmp_path / "out", processes=1, threads=1, batch=2, method="net")
    assert result["registered"] == 3 and result["pairs_per_s"] > 0 and result["wall_s"] >= result["loop_s"]
    assert len(list((tmp_path / "out").glob("*/metrics.json"))) == 3
    rows = forward_rows(32, repeats=1)
    assert len(rows) == 4 and all(row.endswith("× |") for row in rows)
