"""Peak memory (RSS) of ``regcore.register()`` from image files, up to the largest accepted size.

    nice -n 10 python -m benchmarks.memory [--sides 512 1024 2048 4096] [--method optimize] [--model DIR] [--refine-steps 10]

For each side, a (source, target) pair of 8-bit PNG files (a photograph and a shifted copy) is
written to a temporary folder and registered in a fresh Python process, so that every figure is
that process's own high-water mark (``ru_maxrss``). Reported: RSS after importing regcore (the
baseline), peak RSS over the whole call (loading, resampling, registration at ``max_side``,
scaling back, warping and scoring at full size) and the difference, plus the wall time.
The default largest side, 4096, is ``regcore.io.MAX_PIXELS`` (4096²): the biggest image
``register()`` accepts. Registration itself runs at most at 512 px a side, so the number of
optimisation steps hardly changes the memory; few steps keep the script quick.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    """High-water mark of this process's RSS in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> None:
    """Run one registration and print a JSON line with the memory figures."""
    import torch

    import regcore

    torch.set_num_threads(args.threads)
    baseline = _rss_mb()
    start = time.perf_counter()
    result = regcore.register(args.source, args.target, method=args.method, model=args.model, refine_steps=args.refine_steps)
    result.metrics()  # the scores are computed on first use; the CLI and the app always read them
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "shape": list(result.flow.shape[1:]),
                "method": result.method,
                "baseline_mb": round(baseline, 1),
                "peak_mb": round(_peak_mb(), 1),
                "seconds": round(seconds, 2),
                "notes": result.notes,
            }
        )
    )


def _write_pair(side: int, folder: Path) -> tuple[Path, Path]:
    """A photograph at ``side``² and a copy shifted by 2 % of the side, as 8-bit PNG files."""
    from regcore.data import load_photo

    photo = Image.fromarray(np.round(load_photo("camera", 512) * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    shift = max(1, side // 50)
    moved = np.roll(np.asarray(photo), (shift, -shift), axis=(0, 1))
    source, target = folder / f"source_{side}.png", folder / f"target_{side}.png"
    photo.save(source)
    Image.fromarray(moved).save(target)
    return source, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=None, help="image sides in px (default 512 1024 2048 and the largest accepted)")
    p.add_argument("--method", default="optimize", help="register() method (default optimize: needs no checkpoint)")
    p.add_argument("--model", default=None, help="checkpoint for the net methods")
    p.add_argument("--refine-steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.source, args.target = args.child
        _child(args)
        return

    from regcore.io import MAX_PIXELS

    largest = math.isqrt(MAX_PIXELS)
    sides = args.sides or [512, 1024, 2048, largest]
    print(f"register(method={args.method!r}, refine_steps={args.refine_steps}), {args.threads} threads, one fresh process per size")
    print(f"{'side':>6} {'pixels':>12} {'files MB':>9} {'baseline MB':>12} {'peak MB':>9} {'increase MB':>12} {'time s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            source, target = _write_pair(side, Path(tmp))
            command = [sys.executable, "-m", "benchmarks.memory", "--child", str(source), str(target), "--method", args.method]
            command += ["--refine-steps", str(args.refine_steps), "--threads", str(args.threads)]
            if args.model:
                command += ["--model", args.model]
            run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
            if run.returncode != 0:
                print(f"{side:>6} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            row = json.loads(run.stdout.strip().splitlines()[-1])
            size_mb = (source.stat().st_size + target.stat().st_size) / 2**20
            increase = row["peak_mb"] - row["baseline_mb"]
            print(f"{side:>6} {side * side:>12,} {size_mb:>9.1f} {row['baseline_mb']:>12.0f} {row['peak_mb']:>9.0f}", end="")
            print(f" {increase:>12.0f} {row['seconds']:>8.1f}")
            for note in row["notes"]:
                print(f"{'':>6} note: {note}")


if __name__ == "__main__":
    main()
