"""Ablations of the default path (``"net+patches"``), on the tuning pairs only.

``python -m benchmarks.ablations`` takes each tuning set (:func:`benchmarks.sets.tuning_sets`:
images and seeds the benchmark never uses), computes the network's field once per pair
(``register(method="net", polish=False)``), then

- runs :func:`regcore.polish.polish` from it (``"net"``'s Lucas–Kanade pyramid) with the defaults
  and with one parameter changed at a time (:data:`VARIANTS`);
- fuses the default pyramid's field with :func:`regcore.patches.patch_search`'s, with the defaults
  and with one parameter of the search or of the fusion changed at a time (:data:`PATCH_VARIANTS`);
- sharpens the default fusion's motion boundaries (:func:`regcore.boundaries.sharpen_boundaries`)
  with the defaults and with other vote windows (:data:`BOUNDARY_VARIANTS`);
- refines the default sharpened field near them (:func:`regcore.variational.refine_near_boundaries`)
  with the defaults and with other reaches and iteration counts (:data:`VARIATIONAL_VARIANTS`; on the
  target as given: ``register()`` skips this step where it matched the target's histogram);
- runs the rest of the path (fusion, sharpening, refinement) from the default pyramid's and search's
  fields with one setting of the fusion changed (:data:`CHAIN_VARIANTS`),

and writes the mean endpoint error and median time of each variant to
``benchmarks/results/tuning/ablations.md`` (and ``.csv``). This is where the parameters were
chosen; the benchmark itself never tunes.

Times are per pair, the network's pass included, each library at its default threads; in the
fusion's variants the pyramid and the search are timed one after the other (``register()``
runs them side by side: its own rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import regcore
from regcore import boundaries, patches, variational
from regcore.polish import FUSE_LEVEL, LK_WIN, NORM_WIN, SCHEDULE, SPREAD, SPREAD_FACTOR, Level, polish

from .sets import EVAL_SETS, build_pairs, describe, tuning_sets
from .suite import BAR_CONTRAST_SETS, BAR_PHOTO_SETS, machine_description, score, write_csv

#: The sets ablated: the issue-13 bar's photograph and contrast sets that have tuning counterparts (not
#: the real stereo pair), but for the contrast-inverted one (register() inverts its target first).
SETS = tuple(name for name in (*BAR_PHOTO_SETS, *BAR_CONTRAST_SETS) if name in tuning_sets(EVAL_SETS) and name != "photo128-invert")

#: name -> keyword arguments of :func:`regcore.polish.polish` (None: the network's field alone).
VARIANTS: dict[str, dict | None] = {
    "network alone (polish=False)": None,
    "pyramid, defaults": {},
    "normalisation window 7 (was the default)": {"norm_win": 7},
    "normalisation window 9": {"norm_win": 9},
    f"least-squares window 9 (default {LK_WIN})": {"win": 9},
    f"no wide averaging (spread 0, default {SPREAD:g})": {"spread": 0.0},
    "no 16 px level": {"schedule": SCHEDULE[1:]},
    "no zero-start hypothesis (fuse_level None)": {"fuse_level": None},
    "zero-start hypothesis fused at full resolution": {"fuse_level": 1},
    "4 steps a level (was the default)": {"schedule": tuple(Level(level.factor, 4) for level in SCHEDULE)},
    "one step at full resolution only (the first polish)": {"schedule": (Level(1, 1),)},
}


#: name -> (keyword arguments of :func:`regcore.patches.patch_search`, of :func:`regcore.patches.fuse_with_patches`, of the
#: pyramid's :func:`regcore.polish.polish`) changed from what :func:`regcore.pipeline.polish_and_search` does
#: (the pyramid :data:`regcore.patches.PYRAMID_UNDER_PATCHES`, :func:`regcore.patches.fuse_with_patches`'s
#: settings); None: the search's field alone.
PATCH_VARIANTS: dict[str, tuple[dict, dict, dict] | None] = {
    "patch search alone": None,
    "pyramid + patches, boundaries not sharpened": ({}, {}, {}),
    "the pyramid with its 16 px level (net's)": ({}, {}, {"schedule": SCHEDULE}),
    f"hard choice (soften 1, default {patches.FUSE_SOFTEN})": ({}, {"soften": 1}, {}),
    f"margin 0.25, the search's field taken where it fits 1.25x better (default {patches.FUSE_MARGIN:g})": ({}, {"margin": 0.25}, {}),
    f"fusion window 9 (default {patches.FUSE_WIN})": ({}, {"win": 9}, {}),
    f"floor 0.01 (default {patches.FLOOR:g})": ({"floor": 0.01}, {}, {}),
    f"patches every 4 px on the fine levels (default {patches.FINE_STRIDE})": ({"fine_stride": 4}, {}, {}),
}


#: name -> keyword arguments of :func:`regcore.boundaries.sharpen_boundaries`, applied to the default fusion's field.
BOUNDARY_VARIANTS: dict[str, dict] = {
    "pyramid + patches, boundaries sharpened (defaults)": {},
    f"votes out to 12 px, every 4 px (default {boundaries.RADIUS}, every {boundaries.STEP})": {"radius": 12, "step": 4},
    "votes out to 16 px, every 8 px": {"radius": 16, "step": 8},
}

#: name -> keyword arguments of :func:`regcore.patches.fuse_with_patches` for the whole rest of the default path: the
#: default pyramid's and search's fields fused with them, then sharpened and refined with the defaults.
CHAIN_VARIANTS: dict[str, dict] = {
    "fusion margin 0.25 (default 0), then sharpened and refined": {"margin": 0.25},
}

#: name -> keyword arguments of :func:`regcore.variational.refine_near_boundaries`, applied to the default sharpened field.
VARIATIONAL_VARIANTS: dict[str, dict] = {
    "sharpened, then refined near the boundaries (defaults)": {},
    f"refined within 12 px (default {variational.REACH})": {"reach": 12},
    f"4 fixed-point iterations (default {variational.OUTER})": {"outer": 4},
    "refined within 4 px": {"reach": 4},
    "refined everywhere, once anything is steep": {"reach": 100_000},
}


def _timed(fn: Callable[..., np.ndarray], *args, **kwargs) -> tuple[np.ndarray, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def _field(source: np.ndarray, target: np.ndarray, **options) -> np.ndarray:
    return regcore.register(source, target, **options).flow


def _on_pair(fn: Callable[..., Tensor], source: np.ndarray, target: np.ndarray, *fields: np.ndarray, **options) -> np.ndarray:
    """``fn``, a function of batches (``(1, 1, H, W)`` images, then ``(1, 2, H, W)`` fields), on one pair of
    ``(H, W)`` arrays and ``(2, H, W)`` fields: its field as ``(2, H, W)``."""
    images = [torch.from_numpy(image)[None, None] for image in (source, target)]
    with torch.inference_mode():
        return fn(*images, *(torch.from_numpy(field)[None] for field in fields), **options)[0].numpy()


_polished = partial(_on_pair, polish)
_searched = partial(_on_pair, patches.patch_search)
_fused = partial(_on_pair, patches.fuse_with_patches)
_sharpened = partial(_on_pair, boundaries.sharpen_boundaries)
_refined = partial(_on_pair, variational.refine_near_boundaries)


def run(set_names: tuple[str, ...], pairs: int | None) -> list[dict]:
    """One row per (set, variant): mean EPE (px), mean folding (%), median time per pair (s)."""
    specs = tuning_sets(EVAL_SETS)
    rows = []
    for set_name in set_names:
        variants = (*VARIANTS, *PATCH_VARIANTS, *BOUNDARY_VARIANTS, *VARIATIONAL_VARIANTS, *CHAIN_VARIANTS)
        names = ("register() default", "register(method='net')", *variants, "dis-fine")
        found: dict[str, list[tuple[dict, float]]] = {name: [] for name in names}
        for pair in build_pairs(specs[set_name], pairs):
            images = (pair.source, pair.target)
            for name, options in (("register() default", {}), ("register(method='net')", {"method": "net"})):
                flow, seconds = _timed(_field, *images, **options)
                found[name].append((score(pair, flow), seconds))
            peer, seconds = _timed(_field, *images, method="dis-fine", polarity="keep")
            found["dis-fine"].append((score(pair, peer), seconds))
            start, net_seconds = _timed(_field, *images, method="net", polish=False)
            for name, options in VARIANTS.items():
                if options is None:
                    found[name].append((score(pair, start), net_seconds))
                    continue
                flow, seconds = _timed(_polished, *images, start, **options)
                found[name].append((score(pair, flow), net_seconds + seconds))
            pyramids: dict[str, tuple[np.ndarray, float]] = {}  # the pyramids under the fusion, by their options
            for name, variant in PATCH_VARIANTS.items():
                search_options, fuse_options, pyramid_options = variant or ({}, {}, {})
                searched, search_seconds = _timed(_searched, *images, **search_options)
                if variant is None:
                    found[name].append((score(pair, searched), search_seconds))
                    continue
                pyramid_options = {"schedule": patches.PYRAMID_UNDER_PATCHES, **pyramid_options}
                key = repr(pyramid_options)
                if key not in pyramids:
                    pyramids[key] = _timed(_polished, *images, start, **pyramid_options)
                polished, polish_seconds = pyramids[key]
                flow, seconds = _timed(_fused, *images, polished, searched, **fuse_options)
                found[name].append((score(pair, flow), net_seconds + polish_seconds + search_seconds + seconds))
                if variant == ({}, {}, {}):
                    fused, fused_seconds = flow, net_seconds + polish_seconds + search_seconds + seconds
                    fields, fields_seconds = (polished, searched), net_seconds + polish_seconds + search_seconds
            for name, options in BOUNDARY_VARIANTS.items():
                flow, seconds = _timed(_sharpened, *images, fused, **options)
                found[name].append((score(pair, flow), fused_seconds + seconds))
                if not options:
                    sharpened, sharpened_seconds = flow, fused_seconds + seconds
            for name, options in VARIATIONAL_VARIANTS.items():
                flow, seconds = _timed(_refined, *images, sharpened, **options)
                found[name].append((score(pair, flow), sharpened_seconds + seconds))
            for name, options in CHAIN_VARIANTS.items():
                flow, seconds = _timed(_fused, *images, *fields, **options)
                flow, more = _timed(_sharpened, *images, flow)
                flow, most = _timed(_refined, *images, flow)
                found[name].append((score(pair, flow), fields_seconds + seconds + more + most))
        for name, results in found.items():
            rows.append(
                {
                    "set": set_name,
                    "variant": name,
                    "epe_mean": float(np.mean([s["epe"] for s, _ in results])),
                    "folding_percent": float(np.mean([s["folding_percent"] for s, _ in results])),
                    "time_s": statistics.median(t for _, t in results),
                    "pairs": len(results),
                }
            )
            print(f"{set_name:18s} {name:55s} EPE {rows[-1]['epe_mean']:.3f}", flush=True)
    return rows


def write(rows: list[dict], out: Path, command: str) -> Path:
    """``ablations.md`` and ``ablations.csv`` in ``out``; returns the markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    specs = tuning_sets(EVAL_SETS)
    lines = [
        "# Ablations of the default path (tuning pairs)",
        "",
        f"Written by `{command}` (`benchmarks/ablations.py`). Machine: {machine_description()}.",
        f"Defaults: `SCHEDULE` = {[tuple(level) for level in SCHEDULE]} (block size, steps), `NORM_WIN` = {NORM_WIN}, "
        f"`LK_WIN` = {LK_WIN}, `SPREAD` = {SPREAD:g}, `SPREAD_FACTOR` = {SPREAD_FACTOR}, `FUSE_LEVEL` = {FUSE_LEVEL}; "
        "patch search (`regcore/patches.py`): "
        f"`PATCH` = {patches.PATCH}, `STRIDE` = {patches.STRIDE}, `FINE_STRIDE` = {patches.FINE_STRIDE}, `FLOOR` = {patches.FLOOR:g}, "
        f"`FUSE_WIN` = {patches.FUSE_WIN}, `FUSE_MARGIN` = {patches.FUSE_MARGIN:g}, `FUSE_SOFTEN` = {patches.FUSE_SOFTEN}, "
        f"`PYRAMID_UNDER_PATCHES` = {[tuple(level) for level in patches.PYRAMID_UNDER_PATCHES]}; boundaries "
        f"(`regcore/boundaries.py`): `RADIUS` = {boundaries.RADIUS}, `STEP` = {boundaries.STEP}, `STEEP` = {boundaries.STEEP:g}, "
        f"`REACH` = {boundaries.REACH}, `SIGMA_INTENSITY` = {boundaries.SIGMA_INTENSITY:g}, `CONFIDENCE` = {boundaries.CONFIDENCE:g}, "
        f"`KAPPA` = {boundaries.KAPPA:g}, `HOLD` = {boundaries.HOLD:g}.",
        "Each pyramid variant changes one of the pyramid's parameters and starts from the same network field; each fusion",
        "variant changes one of the search's or the fusion's and fuses the default pyramid's field; each boundary variant",
        "sharpens the default fusion's field with other vote windows;",
        "`register() default` is the whole default path (the search beside the pyramid), `register(method='net')` the pyramid",
        "without the search, `dis-fine` OpenCV's DIS at its fine setting, for reference.",
        "EPE: mean over pairs of the interior endpoint error (px); time: median per pair, the network's pass included.",
        "",
    ]
    for set_name in dict.fromkeys(r["set"] for r in rows):
        set_rows = [r for r in rows if r["set"] == set_name]
        lines += [
            f"## {set_name}: {describe(specs[set_name])} ({set_rows[0]['pairs']} pairs)",
            "",
            "| variant | EPE (px) | folding % | time (ms) |",
            "|---|---|---|---|",
            *(f"| {r['variant']} | {r['epe_mean']:.3f} | {r['folding_percent']:.3f} | {1000 * r['time_s']:.1f} |" for r in set_rows),
            "",
        ]
    path = out / "ablations.md"
    path.write_text("\n".join(lines))
    write_csv(out / "ablations.csv", rows, ("set", "variant", "epe_mean", "folding_percent", "time_s", "pairs"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS), help="tuning sets to ablate on")
    parser.add_argument("--pairs", type=int, default=None, help="at most this many pairs per set")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tuning"), help="output folder")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.ablations", *(sys.argv[1:] if argv is None else argv)])
    path = write(run(tuple(args.sets), args.pairs), args.out, command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
