"""Training pieces used by ``train.py``: the loss recipes, an endless data stream, validation,
and pickle-free training state (safetensors + JSON) for resuming.

Recipes:
    ``"unsup"``: the article's: ``similarity(warp(source, flow), target) + reg_weight * Grad(flow)``.
    ``"hybrid"``: the same plus ``sup_weight * mean endpoint error`` against the known generated
    field, which tends to learn faster per CPU minute.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .data import MOTIONS, Batch, make_batch
from .losses import Grad, make_similarity
from .metrics import endpoint_error, folding_percent
from .warp import warp

__all__ = [
    "DataStream",
    "LossConfig",
    "compute_loss",
    "load_state",
    "lr_factor",
    "parse_motions",
    "save_state",
    "validate",
    "validation_batch",
]


@dataclass
class LossConfig:
    """Loss settings: similarity name, smoothness weight, recipe and supervised weight."""

    similarity: str = "ncc"
    reg_weight: float = 1.0
    recipe: str = "hybrid"
    sup_weight: float = 0.1
    win: int = 9


def compute_loss(flow: Tensor, batch: Batch, cfg: LossConfig, sim: nn.Module, reg: nn.Module) -> dict[str, Tensor]:
    """Named loss terms for a predicted ``flow`` ``(N, 2, H, W)`` on ``batch``: ``sim``, ``reg``, ``sup``, ``total``."""
    terms = {"sim": sim(warp(batch.source, flow), batch.target), "reg": reg(flow)}
    total = terms["sim"] + cfg.reg_weight * terms["reg"]
    if cfg.recipe == "hybrid":
        terms["sup"] = (flow - batch.flow).square().sum(dim=1).add(1e-6).sqrt().mean()
        total = total + cfg.sup_weight * terms["sup"]
    elif cfg.recipe != "unsup":
        raise ValueError(f"unknown recipe {cfg.recipe!r}; choose 'unsup' or 'hybrid'")
    terms["total"] = total
    return terms


def make_losses(cfg: LossConfig) -> tuple[nn.Module, nn.Module]:
    """The similarity and smoothness modules for ``cfg``."""
    return make_similarity(cfg.similarity, cfg.win), Grad()


def parse_motions(specs: Sequence[str], default_frac: float) -> dict[str, float]:
    """``["smooth", "large:0.15"]`` -> ``{"smooth": default_frac, "large": 0.15}``: each motion kind of
    :data:`regcore.data.MOTIONS` with its largest displacement as a fraction of the image side."""
    motions = {}
    for spec in specs:
        name, _, frac = spec.partition(":")
        if name not in MOTIONS:
            raise ValueError(f"unknown motion {name!r}; choose from {', '.join(MOTIONS)}")
        value = float(frac) if frac else default_frac
        if not 0 < value < 0.5:
            raise ValueError(f"motion {spec!r}: the displacement fraction must be in (0, 0.5)")
        motions[name] = value
    return motions


class DataStream(torch.utils.data.IterableDataset):
    """Endless seeded stream of generated :class:`Batch` es, sizes drawn from ``sizes`` and motion
    kinds from ``motions`` (name -> largest displacement as a fraction of the side), uniformly.

    The batch is shrunk for larger sizes so each step costs about the same. Each
    (rank, worker) gets its own seed, so processes never repeat each other's data.
    """

    def __init__(self, sizes: tuple[int, ...], batch_size: int, motions: dict[str, float], seed: int, rank: int = 0) -> None:
        super().__init__()
        self.sizes, self.batch_size, self.motions, self.seed, self.rank = sizes, batch_size, dict(motions), seed, rank

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        g = torch.Generator().manual_seed(self.seed * 1000 + self.rank * 50 + worker)
        torch.set_num_threads(1)
        base = min(self.sizes)
        kinds = list(self.motions)
        while True:
            size = self.sizes[int(torch.randint(len(self.sizes), (1,), generator=g))]
            motion = kinds[int(torch.randint(len(kinds), (1,), generator=g))]
            n = max(2, round(self.batch_size * (base / size) ** 2))
            b = make_batch(n, (size, size), self.motions[motion] * size, g, motion=motion)
            yield b.source, b.target, b.flow


def validation_batch(n: int, size: int, motions: dict[str, float], seed: int = 12345) -> Batch:
    """The fixed validation set: ``n`` generated pairs of ``size``², split evenly over ``motions``."""
    g = torch.Generator().manual_seed(seed)
    parts = [make_batch(max(1, n // len(motions)), (size, size), frac * size, g, motion=m) for m, frac in motions.items()]
    return Batch(*(torch.cat([getattr(b, k) for b in parts]) for k in ("source", "target", "flow")))


def lr_factor(progress: float, warmup: float = 0.02) -> float:
    """Learning-rate multiplier at ``progress`` in [0, 1]: linear warm-up, then cosine decay to 5%."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    p = min(1.0, (progress - warmup) / (1.0 - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))


@torch.no_grad()
def validate(net: nn.Module, batch: Batch, cfg: LossConfig, margin: int = 8) -> dict[str, float]:
    """Scores of ``net`` on a fixed generated batch: ``epe`` (px, interior), ``local_ncc``, ``folding``, ``loss``."""
    was_training = net.training
    net.eval()
    flows = torch.cat([net(s[None], t[None]) for s, t in zip(batch.source, batch.target, strict=True)])
    sim, reg = make_losses(cfg)
    terms = compute_loss(flows, batch, cfg, sim, reg)
    net.train(was_training)
    f, t = flows.cpu().numpy(), batch.flow.cpu().numpy()
    return {
        "epe": float(np.mean([endpoint_error(a, b, margin) for a, b in zip(f, t, strict=True)])),
        "local_ncc": float(-make_similarity("ncc")(warp(batch.source, flows), batch.target)),
        "folding": float(np.mean([folding_percent(a) for a in f])),
        "loss": float(terms["total"]),
    }


def save_state(path: str | Path, net: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Write weights + optimiser state (``state.safetensors``) and ``meta`` (``state.json``) to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    save_file(tensors, path / "state.safetensors")
    groups = [{k: v for k, v in group.items()} for group in opt_state["param_groups"]]
    (path / "state.json").write_text(json.dumps({"meta": meta, "param_groups": groups}, indent=1))


def load_state(path: str | Path, net: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """Restore what :func:`save_state` wrote into ``net`` and ``opt``; returns ``meta``."""
    path = Path(path)
    tensors = load_file(path / "state.safetensors")
    info = json.loads((path / "state.json").read_text())
    net.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info["meta"]
