"""Train the registration network on generated pairs; write a checkpoint regcore can load.

    python train.py --loss ncc --steps 20000 --out checkpoints/ncc          # CPU or GPU
    torchrun --nproc_per_node 2 train.py --device cpu --steps 100 --out runs/ddp   # DDP (gloo on CPU)

The best checkpoint (lowest validation endpoint error) goes to ``--out`` with its model card,
the training log (``train_log.csv``) and curves (``curves.png``); the last state, for
``--resume``, goes to ``<out>/state/`` unless ``--state`` says otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from regcore.checkpoints import WEIGHTS_NAME, file_sha256, load_model, save_model
from regcore.nets import RegNet
from regcore.training import (
    Batch,
    DataStream,
    LossConfig,
    compute_loss,
    load_state,
    lr_factor,
    make_losses,
    parse_motions,
    save_state,
    validate,
    validation_batch,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["ncc", "ncc2", "mse"], default="ncc", help="similarity term (default ncc: local NCC)")
    p.add_argument("--recipe", choices=["hybrid", "unsup"], default="hybrid", help="unsup: the article's; hybrid: + supervised EPE term")
    p.add_argument("--reg-weight", type=float, default=None, help="smoothness weight (default 1 for ncc, 0.01 for mse)")
    p.add_argument("--sup-weight", type=float, default=0.1, help="weight of the supervised EPE term (hybrid)")
    p.add_argument("--size", type=int, nargs="+", default=[128], help="training image side(s) in pixels; several = multi-size")
    p.add_argument("--max-disp", type=float, default=0.1, help="largest generated displacement as a fraction of the side")
    p.add_argument(
        "--motion",
        nargs="+",
        default=["smooth"],
        help="motion kinds to draw from, each KIND or KIND:FRACTION (largest displacement / side; default --max-disp):"
        " smooth (random bends), large (affine + bend), layered (objects moving over a background)",
    )
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step at the smallest size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--enc", type=int, nargs="+", default=None, help="encoder widths (default RegNet's)")
    p.add_argument("--dec", type=int, nargs="+", default=None, help="decoder widths (default RegNet's)")
    p.add_argument("--int-downsize", type=int, default=2)
    p.add_argument("--diffeomorphic", action="store_true", help="predict a velocity field integrated in 7 steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (fp16 is not used: bf16 needs no loss scaling)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1, help="data-generating worker processes (0 = in the main process)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-pairs", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", choices=["last", "best"], default=None, help="continue from the saved state")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (e.g. checkpoints/ncc)")
    p.add_argument("--state", type=Path, default=None, help="where the resumable state goes (default <out>/state)")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="time budget: the schedule follows whichever of steps and time runs out first"
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from the weights of a saved state folder or a checkpoint folder (fine-tuning; fresh schedule)",
    )
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in the model card, to reproduce the run
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    )
    rank, world = 0, 1
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    reg_weight = args.reg_weight if args.reg_weight is not None else (0.01 if args.loss == "mse" else 1.0)
    cfg = LossConfig(similarity=args.loss, reg_weight=reg_weight, recipe=args.recipe, sup_weight=args.sup_weight)
    arch = {"int_downsize": args.int_downsize, "int_steps": 7 if args.diffeomorphic else 0}
    if args.enc:
        arch["enc_features"] = args.enc
    if args.dec:
        arch["dec_features"] = args.dec
    net = RegNet(**arch).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    state_dir = args.state or args.out / "state"
    start_step, best = 0, float("inf")
    if args.resume:
        meta = load_state(state_dir / args.resume, net, opt)
        start_step, best = meta["step"], meta["best_epe"]
    elif args.init and (args.init / WEIGHTS_NAME).is_file():
        net.load_state_dict(load_model(args.init).state_dict())
        args.init_from = f"the checkpoint {args.init} (weights sha256 {file_sha256(args.init / WEIGHTS_NAME)[:12]}…)"
    elif args.init:
        init = load_state(args.init, net, torch.optim.Adam(net.parameters()))
        args.init_from = (
            f"the saved state {args.init} (step {init['step']} of a run with loss {init['args']['loss']}, recipe {init['args']['recipe']})"
        )
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    sim, reg = make_losses(cfg)

    sizes = tuple(args.size)
    motions = parse_motions(args.motion, args.max_disp)
    stream = DataStream(sizes, args.batch_size, motions, args.seed + start_step, rank)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers, prefetch_factor=4 if args.workers else None)
    val = validation_batch(args.val_pairs, sizes[0], motions)  # the same set in every run with these motions
    val = Batch(val.source.to(device), val.target.to(device), val.flow.to(device))

    log_path = args.out / "train_log.csv"
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.resume or not log_path.exists():
            log_path.write_text("step,split,loss,sim,reg,sup,epe,local_ncc,folding,lr,pairs_per_s,elapsed_s\n")
    t0, seen, last_time = time.time(), 0, time.time()
    bar = tqdm(total=args.steps, initial=start_step, disable=rank != 0, dynamic_ncols=True, mininterval=5)
    running: dict[str, float] = {}
    validated = completed = start_step

    def checkpoint(done: int) -> None:
        """Validate, log both rows, save the last state and, if it is the best so far, the model."""
        nonlocal best, seen, last_time
        scores = validate(net, val, cfg)
        rate, lr, elapsed = seen / max(1e-9, time.time() - last_time), opt.param_groups[0]["lr"], time.time() - t0
        seen, last_time = 0, time.time()
        with log_path.open("a", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [done, "train", running["total"], running["sim"], running["reg"], running.get("sup", ""), "", "", "", lr, rate, elapsed]
            )
            w.writerow([done, "val", scores["loss"], "", "", "", scores["epe"], scores["local_ncc"], scores["folding"], lr, "", elapsed])
        meta = {"step": done, "best_epe": min(best, scores["epe"]), "args": {k: str(v) for k, v in vars(args).items()}}
        save_state(state_dir / "last", net, opt, meta)
        if scores["epe"] < best:
            best = scores["epe"]
            save_state(state_dir / "best", net, opt, meta)
            save_model(net, args.out)
        tqdm.write(f"step {done}: val EPE {scores['epe']:.3f} px, local NCC {scores['local_ncc']:.3f}, folding {scores['folding']:.3f}%")

    for step, (s, t, f) in enumerate(loader, start=start_step):
        progress = step / args.steps
        if args.max_minutes:
            progress = max(progress, (time.time() - t0) / (60 * args.max_minutes))
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor(progress)
        batch = Batch(s.to(device), t.to(device), f.to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda"):
            flow = model(batch.source, batch.target)
        terms = compute_loss(flow.float(), batch, cfg, sim, reg)
        if not torch.isfinite(terms["total"]):
            # A non-finite field makes grid_sample's CPU backward crash the process: skip the batch, say so.
            tqdm.write(f"step {step + 1}: non-finite loss, batch skipped")
            continue
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        completed = step + 1
        seen += len(s) * world
        for k, v in terms.items():
            running[k] = 0.98 * running.get(k, v.item()) + 0.02 * v.item()
        if rank == 0 and step % 20 == 0:
            bar.set_postfix(loss=f"{running['total']:.4f}", pairs_s=f"{seen / max(1e-9, time.time() - last_time):.1f}")
        bar.update(1)
        if rank == 0 and completed % args.val_every == 0:
            checkpoint(completed)
            validated = completed
    if rank == 0 and completed > validated:
        checkpoint(completed)
    bar.close()
    if rank == 0:
        write_report(args, cfg, arch, device, time.time() - t0, completed)
    if distributed:
        dist.destroy_process_group()


def write_report(args: argparse.Namespace, cfg: LossConfig, arch: dict, device: torch.device, seconds: float, steps: int) -> None:
    """Plot the curves and write the model card next to the best checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((args.out / "train_log.csv").open()))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "train"]
    val = [(int(r["step"]), float(r["epe"])) for r in rows if r["split"] == "val"]
    if not val:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(*zip(*train, strict=True), label="train loss (smoothed)")
    ax1.set_xlabel("step")
    ax1.legend()
    ax2.plot(*zip(*val, strict=True), "o-", label="validation EPE (px)")
    ax2.set_xlabel("step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=80)
    plt.close(fig)
    best_step, best_epe = min(val, key=lambda v: v[1])
    best_row = next(r for r in rows if r["split"] == "val" and int(r["step"]) == best_step)
    weights = args.out / "model.safetensors"
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})"
    )
    similarity = "local NCC, window 9" if cfg.similarity == "ncc" else cfg.similarity
    recipe = f"similarity + {cfg.reg_weight} × smoothness"
    if cfg.recipe == "hybrid":
        recipe += f" + {cfg.sup_weight} × EPE to the known field"
    command = "python train.py " + shlex.join(args.argv)
    rows_md = [
        ("architecture", f"`{json.dumps(arch)}` (RegNet defaults otherwise; see `config.json`)"),
        ("similarity", f"`{cfg.similarity}` ({similarity})"),
        ("recipe", f"`{cfg.recipe}`: {recipe}"),
        (
            "data",
            "generated only: SynthMorph-style label maps and multi-octave noise textures, "
            f"sizes {args.size}, motions {', '.join(f'{k} up to {v:.0%}' for k, v in parse_motions(args.motion, args.max_disp).items())}"
            " of the side, "
            "independent bias/gamma/noise on each image",
        ),
        ("steps", f"{steps} of {args.steps} (batch {args.batch_size} at the smallest size), Adam lr {args.lr}, warm-up + cosine"),
        ("hardware", hardware),
        ("training time", f"{seconds / 60:.1f} min"),
        (
            f"best validation (step {best_step})",
            f"EPE {best_epe:.3f} px, local NCC {float(best_row['local_ncc']):.3f}, "
            f"folding {float(best_row['folding']):.3f}% on {args.val_pairs} generated {args.size[0]}² pairs",
        ),
        ("weights sha256", f"`{file_sha256(weights)}`"),
    ]
    if getattr(args, "init_from", None):
        rows_md.insert(4, ("initialised from", f"{args.init_from}; its training time is not included below"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows_md)
    card = f"""---
library_name: regcore
tags: [image-registration, deformable-registration, voxelmorph]
license: mit
---
# regcore RegNet — {args.out.name}

2-D deformable registration UNet (VoxelMorph-style) for `regcore.register()`:
input a (source, target) pair of gray images in [0, 1], output a displacement field
`(2, H, W)` in pixels (channel 0 rows, channel 1 columns; `warped[y, x] = source[y + u0, x + u1]`).

| | |
|---|---|
{table}

Reproduce: `{command}`

Real-photograph results: see `benchmarks/` in the repository (the photographs were never used in training).

![curves](curves.png)
"""
    (args.out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
