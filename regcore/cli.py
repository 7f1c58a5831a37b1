"""Command line: ``python -m regcore register SOURCE TARGET --out DIR`` (and ``register-many``, ``warp``, ``models``).

Bad input exits with status 2 and one readable line on stderr (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .api import METHODS, POLARITIES, PRESMOOTH_MODES, register
from .errors import RegcoreError
from .pipeline import DEFAULT_METHOD, FALLBACK_METHOD
from .volumes import AXES

EXIT_BAD_INPUT = 2
FORMATS_HELP = "PNG, JPEG, TIFF, BMP, ...; NIfTI, DICOM, MetaImage, NRRD"


def _registration_options(r: argparse.ArgumentParser) -> None:
    """The options ``register`` and ``register-many`` share."""
    r.add_argument(
        "--method", choices=list(METHODS), default=None, help=f"default: {DEFAULT_METHOD} with a checkpoint, else {FALLBACK_METHOD}"
    )
    r.add_argument("--model", default=None, help="checkpoint folder, shipped name, or hf:user/repo for a Hugging Face Hub model")
    r.add_argument("--refine-steps", type=int, default=None, help="optimisation steps per pyramid level (net+refine, optimize)")
    r.add_argument("--similarity", choices=["ncc", "ncc2", "gncc", "mse"], default="ncc", help="optimisation similarity")
    r.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    r.add_argument(
        "--polarity",
        choices=POLARITIES,
        default="auto",
        help="auto: take an anti-correlated target as inverted, and match a clearly different histogram to the source's",
    )
    r.add_argument(
        "--presmooth", choices=PRESMOOTH_MODES, default="auto", help="auto: the optimisation compares smoothed images when they look noisy"
    )
    r.add_argument(
        "--slice-axis", choices=AXES, default="z", help="3-D volumes: the voxel axis the registered slice is perpendicular to (default z)"
    )
    r.add_argument("--slice-index", type=int, default=None, help="3-D volumes: the slice's index along --slice-axis (default: the middle)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m regcore", description="2-D deformable image registration.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="register SOURCE to TARGET; write warped.png, flow.npy, metrics.json")
    r.add_argument("source", help=f"image to deform ({FORMATS_HELP})")
    r.add_argument("target", help="image to match")
    r.add_argument("--out", required=True, type=Path, help="output folder (created if needed)")
    _registration_options(r)
    r.add_argument("--source-labels", default=None, help="the source's label map (integer PNG/TIFF or a medical format): warped too")
    r.add_argument("--target-labels", default=None, help="the target's label map: Dice per label before and after in metrics.json")
    m = sub.add_parser(
        "register-many",
        help="register every pair of a CSV (columns source,target[,source_labels,target_labels]) into OUT/<row>/; write OUT/summary.csv",
        description="Rows already done are skipped; a bad row is reported in summary.csv. Under torchrun, rows are sharded across ranks.",
    )
    m.add_argument("pairs", type=Path, help="CSV with a header; relative paths are relative to its folder")
    m.add_argument("--out", required=True, type=Path, help="output folder: one folder per row, and summary.csv")
    m.add_argument("--batch-size", type=int, default=8, help="pairs registered together (batched network passes; default 8)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    _registration_options(m)
    w = sub.add_parser("warp", help="warp IMAGE by a saved FLOW (.npy, (2, H, W) pixels; a smaller one is scaled up); write OUT")
    w.add_argument("image")
    w.add_argument("flow", type=Path)
    w.add_argument("--out", required=True, type=Path, help="output image file (.png)")
    sub.add_parser("models", help="list the shipped checkpoints")
    return p


def _options(args: argparse.Namespace) -> dict:
    keys = ("method", "model", "refine_steps", "similarity", "device", "polarity", "presmooth", "slice_axis", "slice_index")
    return {key: getattr(args, key) for key in keys}


def _register(args: argparse.Namespace) -> None:
    result = register(args.source, args.target, source_labels=args.source_labels, target_labels=args.target_labels, **_options(args))
    try:
        paths = result.save(args.out)
    except OSError as err:
        raise RegcoreError(f"cannot write to {args.out}: {err.strerror or err}") from None
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    b, a = result.before, result.after
    print(f"method {result.method}" + (f" (model {result.model})" if result.model else "") + f", {result.time_s:.2f} s")
    print(f"{'':12}{'before':>10}{'after':>10}")
    for key in ("mse", "ncc", "local_ncc"):
        print(f"{key:12}{b[key]:10.4f}{a[key]:10.4f}")
    if result.dice is not None and result.dice["before"]["mean"] is not None:  # None: neither map has a label
        print(f"{'Dice (mean)':12}{result.dice['before']['mean']:10.4f}{result.dice['after']['mean']:10.4f}")
    print(f"folding     {a['folding_percent']:.3f}% of pixels")
    shift = result.displacement
    in_mm = f" ({shift['mean_mm']:.3f} / {shift['max_mm']:.3f} mm)" if "mean_mm" in shift else ""
    print(f"displacement mean / max {shift['mean_px']:.3f} / {shift['max_px']:.3f} px{in_mm}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _register_many(args: argparse.Namespace) -> None:
    from .many import register_many

    report = register_many(args.pairs, args.out, batch_size=args.batch_size, progress=not args.no_progress, **_options(args))
    if report.rank == 0:  # the other ranks of a torchrun job stay quiet
        print(
            f"registered {report.registered} pairs in {report.elapsed_s:.2f} s ({report.pairs_per_s:.2f} pairs/s,"
            f" {report.processes} process{'es' if report.processes > 1 else ''}); {report.skipped} already done;"
            f" {report.failed} failed" + (" (see summary.csv)" if report.failed else "")
        )
        print(f"wrote {report.summary}")


def _warp(args: argparse.Namespace) -> None:
    import torch

    from .io import load_image, save_image
    from .warp import resize_flow, warp

    image = load_image(args.image)
    try:
        flow = np.load(args.flow, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise RegcoreError(f"{args.flow}: not a readable .npy field ({err})") from None
    if flow.ndim != 3 or flow.shape[0] != 2 or min(flow.shape[1:]) < 2:
        raise RegcoreError(f"{args.flow}: field shape {flow.shape} is not a (2, H, W) field; expected {(2, *image.shape)}")
    if not np.isfinite(flow).all():
        raise RegcoreError(f"{args.flow}: the field contains NaN or infinite values")
    field = torch.from_numpy(flow.astype(np.float32))[None]
    if flow.shape[1:] != image.shape:
        # A field saved at the registered resolution (the app's flow.npy for a large image): its
        # metrics.json gives the scale that resize_flow applies.
        field = resize_flow(field, image.shape)
        print(
            f"note: the field {flow.shape[2]}x{flow.shape[1]} was resampled to the image's {image.shape[1]}x{image.shape[0]}",
            file=sys.stderr,
        )
    with torch.inference_mode():
        out = warp(torch.from_numpy(image)[None, None], field)
    try:
        save_image(args.out, out[0, 0].numpy())
    except (OSError, ValueError) as err:
        raise RegcoreError(f"cannot write {args.out}: {err}") from None
    print(f"wrote {args.out}")


def _models(_: argparse.Namespace) -> None:
    from .checkpoints import available_models

    models = available_models()
    if not models:
        print("no shipped checkpoints")
    for i, (name, path) in enumerate(models.items()):
        config = json.loads((path / "config.json").read_text())
        print(f"{name}{' (default)' if i == 0 else ''}: {path}  {json.dumps(config, separators=(',', ':'))}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"register": _register, "register-many": _register_many, "warp": _warp, "models": _models}[args.command](args)
    except RegcoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0
