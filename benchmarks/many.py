"""Throughput of ``register-many``: pairs per second with 1 and 2 processes, and what batching the
network's pass buys on CPU.

    python -m benchmarks.many [--pairs 96] [--size 256] [--repeats 3] [--method net] [--out benchmarks/results/many.md]

Pairs: scikit-image's photographs at ``--size``², each deformed by known smooth fields
(:func:`regcore.data.photo_pairs`, one seed per round of 12 photographs), written as PNGs with a
pairs CSV into a temporary folder. Each configuration runs ``python -m regcore register-many``
(under ``torchrun --standalone --nproc_per_node 2`` for two processes) into an empty folder;
pairs/s is the command's own figure: the registration loop (read, register, score, write every
pair; process start-up and model loading excluded), and the wall time of the whole command is
given too. Configurations are interleaved, ``--repeats`` rounds, median reported.

The second table times the network's forward pass alone (:func:`regcore.inference.network_flow`)
on 8 pairs: one batch of 8 against 8 passes of one, per backend (ONNX Runtime, PyTorch) and
thread count.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from regcore.checkpoints import default_model_name, load_model
from regcore.data import PHOTO_NAMES, photo_pairs
from regcore.inference import network_flow
from regcore.io import save_image

from .suite import call_times

RESULTS = Path(__file__).resolve().parent / "results"
#: (name, processes, threads per process, batch size)
CONFIGS = (
    ("1 process, 2 threads, batch 1", 1, 2, 1),
    ("1 process, 2 threads, batch 8", 1, 2, 8),
    ("1 process, 1 thread, batch 8", 1, 1, 8),
    ("2 processes (torchrun, gloo), 1 thread each, batch 8", 2, 1, 8),
)
REPORT = re.compile(r"registered (\d+) pairs in ([\d.]+) s \(([\d.]+) pairs/s")


def write_pairs(folder: Path, n: int, size: int) -> Path:
    """``n`` photograph pairs at ``size``² as PNGs, and their pairs CSV (paths relative to it)."""
    rows = []
    for seed in range((n + len(PHOTO_NAMES) - 1) // len(PHOTO_NAMES)):
        batch = photo_pairs(size, 0.06 * size, seed)
        for name, source, target in zip(PHOTO_NAMES, batch.source, batch.target, strict=True):
            if len(rows) == n:
                break
            stem = f"{name}_{seed}"
            save_image(folder / f"{stem}_s.png", source[0].numpy())
            save_image(folder / f"{stem}_t.png", target[0].numpy())
            rows.append({"source": f"{stem}_s.png", "target": f"{stem}_t.png"})
    path = folder / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["source", "target"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_config(pairs: Path, out: Path, processes: int, threads: int, batch: int, method: str) -> dict[str, float]:
    """One ``register-many`` run into the empty folder ``out``: its pairs/s, loop time and command wall time."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "regcore", "register-many", str(pairs), "--out", str(out)]
    command += ["--method", method, "--batch-size", str(batch), "--no-progress"]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - start
    found = REPORT.search(run.stdout)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"register-many failed ({run.returncode}): {run.stderr[-2000:]}")
    registered, loop_s, rate = int(found[1]), float(found[2]), float(found[3])
    return {"registered": registered, "loop_s": loop_s, "pairs_per_s": rate, "wall_s": wall}


def forward_rows(size: int, repeats: int) -> list[str]:
    """Markdown rows: the network's pass on 8 pairs, one batch vs one at a time, per backend and thread count."""
    name = default_model_name()
    if name is None:
        return ["| (no shipped checkpoint: not measured) | | | | |"]
    net = load_model(name)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.rand(8, 1, size, size, generator=g), torch.rand(8, 1, size, size, generator=g)
    rows = []
    previous = os.environ.get("REGCORE_ONNX"), torch.get_num_threads()
    try:
        for backend, flag in (("ONNX Runtime", "1"), ("PyTorch", "0")):
            os.environ["REGCORE_ONNX"] = flag
            for threads in (1, 2):
                torch.set_num_threads(threads)
                one = call_times(lambda: [network_flow(net, src[i : i + 1], tgt[i : i + 1]) for i in range(8)], repeats, warmup=2)
                batched = call_times(lambda: network_flow(net, src, tgt), repeats, warmup=2)
                single_ms, batch_ms = 1000 * statistics.median(one) / 8, 1000 * statistics.median(batched) / 8
                rows.append(f"| {backend} | {threads} | {single_ms:.1f} | {batch_ms:.1f} | {single_ms / batch_ms:.2f}× |")
    finally:
        if previous[0] is None:
            os.environ.pop("REGCORE_ONNX", None)
        else:
            os.environ["REGCORE_ONNX"] = previous[0]
        torch.set_num_threads(previous[1])
    return rows


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forward-repeats", type=int, default=10)
    p.add_argument("--method", default="net")
    p.add_argument("--out", type=Path, default=RESULTS / "many.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="regcore-many-") as tmp:
        pairs = write_pairs(Path(tmp), args.pairs, args.size)
        run_config(pairs, Path(tmp) / "warm-up", 1, 2, 8, args.method)  # exports and caches the ONNX model once
        results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in CONFIGS}
        loads = [os.getloadavg()[0]]
        for round_ in range(args.repeats):
            for name, processes, threads, batch in CONFIGS:
                out = Path(tmp) / f"out-{round_}-{processes}-{threads}-{batch}"
                results[name].append(run_config(pairs, out, processes, threads, batch, args.method))
                loads.append(os.getloadavg()[0])
    forward = forward_rows(args.size, args.forward_repeats)
    command = " ".join(["python -m benchmarks.many", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        f"# register-many throughput, {args.size}², method `{args.method}`",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, model {default_model_name()}.",
        f"1-minute load average during the runs: {min(loads):.2f} to {max(loads):.2f} (sampled after each run).",
        "",
        f"{args.pairs} pairs (scikit-image photographs deformed by known fields), PNG in, warped.png + flow.npy + metrics.json out;",
        f"median of {args.repeats} interleaved rounds. pairs/s: the registration loop (read, register, score, write; start-up and",
        "model loading excluded); wall: the whole command, start-up included.",
        "",
        "| configuration | pairs/s | loop (s) | wall (s) |",
        "|---|---|---|---|",
    ]
    for name, runs in results.items():
        rate, loop, wall = (statistics.median(r[key] for r in runs) for key in ("pairs_per_s", "loop_s", "wall_s"))
        lines.append(f"| {name} | {rate:.1f} | {loop:.2f} | {wall:.1f} |")
    lines += [
        "",
        f"Network forward pass alone, 8 pairs at {args.size}² (median of {args.forward_repeats}), per pair:",
        "",
        "| backend | threads | one at a time (ms/pair) | one batch of 8 (ms/pair) | batching speed-up |",
        "|---|---|---|---|---|",
        *forward,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return args.out


if __name__ == "__main__":
    main()
