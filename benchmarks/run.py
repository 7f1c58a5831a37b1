"""Benchmark regcore against classical registration: accuracy, speed and scaling.

    python -m benchmarks.run                      # full accuracy benchmark, shipped checkpoints
    python -m benchmarks.run --quick              # ~1 min on 2 cores: a few small pairs (CI)
    python -m benchmarks.run --tuning             # every set on tuning images and seeds -> benchmarks/results/tuning/
    python -m benchmarks.run --tuning --sets photo256-large --methods dis-fine 'ncc:net'
    python -m benchmarks.run --model runs/x       # a checkpoint folder instead (repeatable)
    python -m benchmarks.run --scaling            # also time vs size (64² .. 1024²) and batch throughput
    python -m benchmarks.run --only-scaling       # only that
    python -m benchmarks.run --sets photo256 --methods tvl1 ncc:net --pairs 4
    python -m benchmarks.run --sets photo128 photo256:6 labels128:4   # NAME:PAIRS caps one set
    python -m benchmarks.run --threads 1          # one thread for every method (default: each library's own)

Run from the repository's top folder, with regcore installed (``pip install -r requirements-bench.txt``
installs it in editable mode).

Writes to --out (default benchmarks/results/, or benchmarks/results/tuning/ with --tuning):
results.md (issue 13's bar, then one table per set), results.csv, pairs.csv (every pair),
accuracy_vs_time.png, and with scaling scaling.md/.csv/.png and throughput.csv.

--tuning builds the same sets (same names) from scikit-image images the benchmark never uses,
with other seeds (benchmarks/sets.py: TUNING_NAMES, tuning_sets), so methods can be tuned
without seeing a benchmark pair; the stereo set has no tuning counterpart and is left out.
Every method runs at its library's default thread count unless --threads N is given.

Classical methods whose package is missing are skipped with a message (pip install -r
requirements-bench.txt). The reusable parts are benchmarks/sets.py, benchmarks/suite.py and
benchmarks/speedups.py. Paths in the written files are relative to the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from fnmatch import fnmatch
from pathlib import Path

from regcore import available_models

from . import sets as eval_sets
from . import speedups, suite

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few small pairs, no slow methods, small scaling (CI)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default benchmarks/results/, with --tuning benchmarks/results/tuning/)"
    )
    p.add_argument("--tuning", action="store_true", help="build every set on tuning images with other seeds (never the benchmark's pairs)")
    p.add_argument(
        "--model", action="append", default=None, help="checkpoint folder or shipped name (repeatable); default: every shipped one"
    )
    p.add_argument(
        "--sets", nargs="+", default=None, help=f"evaluation sets, NAME or NAME:PAIRS (default all: {' '.join(eval_sets.EVAL_SETS)})"
    )
    p.add_argument("--pairs", type=int, default=None, help="at most this many pairs per set")
    p.add_argument("--methods", nargs="+", default=None, help="method names or glob patterns to keep (e.g. tvl1 '*:net' demons)")
    p.add_argument("--refine-steps", type=int, nargs="+", default=[10, 30, 100], help="net+refine step counts (default 10 30 100)")
    p.add_argument(
        "--threads", type=int, default=0, help="threads for every method (torch, OpenCV, SimpleITK); 0 (default) = each library's default"
    )
    p.add_argument("--scaling", action="store_true", help="also run the scaling benchmark")
    p.add_argument("--only-scaling", action="store_true", help="run only the scaling benchmark")
    p.add_argument("--speedups", action="store_true", help="profile the network path and time inference variants (speedups.md)")
    p.add_argument("--scaling-max-optimize", type=int, default=1024, help="largest side timed for 'optimize' in scaling (it is slow)")
    p.add_argument("--scaling-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024], help="sides for the scaling benchmark")
    return p


def _models(args: argparse.Namespace) -> dict[str, str]:
    if args.model:
        return {Path(m).name if Path(m).is_dir() else m: m for m in args.model}
    return {name: str(path) for name, path in available_models().items()}


def shown(path: str | os.PathLike) -> str:
    """``path`` as the results files show it: relative to the repository when inside it (no machine's own folders)."""
    resolved = Path(path).resolve()
    return resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(path)


def _speedups(out: Path, model: str, header: str, threads: int) -> None:
    """Profile register(method="net"), split its time, and time inference variants; write speedups.md."""
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# speed-ups of the network path\n\n{header}\n", f"## torch profiler: register(method='net') at 256², {threads} thread(s)\n"]
    parts.append("```\n" + speedups.profile_register(model) + "\n```\n")
    parts += ["## where register(method='net') spends its time (median ms)\n", "| size | part | ms |", "|---|---|---|"]
    parts += [f"| {r['size']}² | {r['part']} | {r['ms']:.1f} |" for r in speedups.register_breakdown(model)]
    parts += [
        "",
        "## kept in regcore: register() before / after, same process, alternating (median ms)\n",
        "before: PyTorch, default memory format, 2-D box filter in local NCC; torch: channels-last weights, strided-view window sums;",
        "onnx: the same with the network's UNet run by ONNX Runtime (the default when onnxruntime and onnx are installed).\n",
        "| size | method | state | ms |",
        "|---|---|---|---|",
    ]
    parts += [f"| {r['size']}² | {r['method']} | {r['state']} | {r['ms']:.1f} |" for r in speedups.register_before_after(model)]
    rows = speedups.forward_variants(model)
    suite.set_threads(threads)  # forward_variants changes torch's thread count
    parts += ["", "## network forward pass variants (median ms; max |difference| to eager in px; one-off setup s)\n"]
    parts += ["| threads | size | variant | ms | max diff (px) | setup (s) |", "|---|---|---|---|---|---|"]
    parts += [
        f"| {r['threads']} | {r['size']}² | {r['variant']} | {r['ms']:.1f} | {r['max_abs_diff']:.1e} | {r['setup_s']:.1f} |" for r in rows
    ]
    (out / "speedups.md").write_text("\n".join(parts) + "\n")
    print((out / "speedups.md").read_text())


def _sets(args: argparse.Namespace) -> dict[str, eval_sets.EvalSet] | str:
    """The sets to run (``--quick``, ``--sets NAME[:PAIRS]``, ``--tuning``), or why the request is refused."""
    known = {**eval_sets.EVAL_SETS, **eval_sets.QUICK_SETS}
    chosen = eval_sets.QUICK_SETS if args.quick else eval_sets.EVAL_SETS
    if args.tuning:
        known, chosen = eval_sets.tuning_sets(known), eval_sets.tuning_sets(chosen)
    if not args.sets:
        return dict(chosen)
    counts = {name: int(n) for name, _, n in (s.partition(":") for s in args.sets) if n}
    names = [s.partition(":")[0] for s in args.sets]
    unknown = [s for s in names if s not in known]
    if unknown:
        tuning = " on tuning images (the stereo pair has no tuning counterpart)" if args.tuning else ""
        return f"unknown set(s) {', '.join(unknown)}{tuning}; choose from {', '.join(known)}"
    return {s: replace(known[s], count=min(counts[s], known[s].count)) if s in counts else known[s] for s in names}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    suite.set_threads(args.threads or None)
    models = _models(args)
    out: Path = args.out or ROOT / "benchmarks" / "results" / ("tuning" if args.tuning else "")
    if not models:
        print("no checkpoint shipped or given (--model): the network methods are skipped", flush=True)
    header = f"Machine: {suite.machine_description(args.threads or None)}. Models: " + (
        ", ".join(f"`{n}` ({shown(p)})" for n, p in models.items()) or "none"
    )
    if args.tuning:
        header += (
            f"\n\n**Tuning run**: pairs from scikit-image images the benchmark never uses ({', '.join(eval_sets.TUNING_NAMES)} "
            f"and seeded crops of them), seeds offset by {eval_sets.TUNING_SEED_OFFSET}. Not benchmark results."
        )
    started = time.perf_counter()
    if not args.only_scaling:
        sets = _sets(args)
        if isinstance(sets, str):
            print(sets, file=sys.stderr)
            return 2
        steps = [s for s in args.refine_steps if s <= 30] if args.quick else args.refine_steps
        methods = [
            suite.identity_method(),
            *suite.classical_methods(),
            *suite.regcore_methods(models, steps, optimize_steps=30 if args.quick else None),
        ]
        if args.quick:
            methods = [m for m in methods if not m.slow]
        if args.methods:
            methods = [m for m in methods if m.name == "identity" or any(fnmatch(m.name, pat) for pat in args.methods)]
        rows = suite.run_accuracy(sets, methods, args.pairs, min_calls=1 if args.quick else suite.MIN_TIMED_CALLS)
        summary = suite.summarise(rows)
        paths = suite.write_outputs(out, rows, summary, sets, methods, header, next(iter(models), None))
        print(paths.files["markdown"].read_text())
    if args.scaling or args.only_scaling:
        sizes = [s for s in args.scaling_sizes if s <= 128] if args.quick else args.scaling_sizes
        model = next(iter(models.values()), None)
        batch = {"batch_sizes": (1, 4), "batch_sides": (64,)} if args.quick else {}
        rows, throughput = suite.scaling(sizes, model, max_optimize=args.scaling_max_optimize, **batch)
        paths = suite.write_scaling(out, rows, throughput, header + (f"; scaling uses `{next(iter(models))}`" if models else ""))
        print(paths.files["markdown"].read_text())
    if args.speedups:
        if not models:
            print("--speedups needs a model (--model or a shipped checkpoint)", file=sys.stderr)
            return 2
        _speedups(out, next(iter(models.values())), header, args.threads or 1)
    print(f"wrote {shown(out)} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
