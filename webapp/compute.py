"""The computations behind the app's Learn and Compare tabs (no UI, no plotting; app-side, over regcore).

- :func:`deform_photo`: a photograph and the same photograph deformed by a known smooth field
  whose size and smoothness you choose.
- :func:`walkthrough`: the four steps of the method on one pair: network -> field -> warp ->
  similarity loss -> backprop, with what each step produces.
- :func:`train_live`: a tiny UNet trained for a few hundred steps on generated pairs, yielding
  its progress (a generator, so a UI can stream it).
- :func:`compare_methods`: the same pair registered by the network, by the project's per-pair
  optimisation and by classical optical flows (scikit-image's TV-L1, OpenCV's DIS), every one
  through :func:`regcore.register` (``method=...``), scored the same way.

Images are ``(H, W)`` float32 in [0, 1]; fields ``(2, H, W)`` float32 in pixels (channel 0 rows,
channel 1 columns, ``warped[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from regcore.api import RegistrationResult, register
from regcore.checkpoints import available_models, load_model
from regcore.data import load_photo, make_batch, smooth_noise
from regcore.errors import RegcoreError
from regcore.io import ImageLike, load_image
from regcore.losses import NCC, Grad, local_ncc_map
from regcore.metrics import endpoint_error
from regcore.nets import RegNet
from regcore.pipeline import METHODS, MIN_SIDE
from regcore.training import LossConfig, compute_loss, lr_factor, make_losses
from regcore.warp import VecInt, warp

__all__ = [
    "COMPARE_METHODS",
    "COMPARE_SIDE",
    "TrainUpdate",
    "Walkthrough",
    "compare_methods",
    "deform_photo",
    "resolve_model",
    "tiny_regnet",
    "train_live",
    "walkthrough",
    "warm_up",
]


def _t(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` -> ``(1, 1, H, W)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]


def warm_up(model: str | None) -> None:
    """One registration of a small pair with the default method: its compiled loops (numba: the
    pyramid's steps, the patch search, the boundary sharpening and refinement) are loaded from disk, or compiled in a
    fresh environment (about 15 s on a 2-core CPU), before the first visitor rather than during the first request.
    In the pair a square moves over a still background, so that the steps that only run near a jump of the field run too."""
    image = load_photo("camera", 64)
    moved = image.copy()
    moved[16:48, 16:48] = image[16:48, 12:44]
    register(image, moved, model=resolve_model(model))


def resolve_model(model: str | None) -> str | None:
    """``model`` if given, else the default shipped checkpoint, else None (no checkpoint available)."""
    return model or next(iter(available_models()), None)


def deform_photo(name: str, size: int, magnitude: float, smoothness: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scikit-image photograph and a deformed copy: ``(source, target, flow)`` with ``target = warp(source, flow)``.

    Args:
        name: one of :data:`regcore.data.PHOTO_NAMES`.
        size: side of the square images in pixels.
        magnitude: largest displacement in pixels (approximately; 0 gives the identity).
        smoothness: 1 (wiggly, many small bumps) to 10 (one broad bend): sets the spacing of the
            random noise the field is made from (``size / cells`` with ``cells ≈ 16 / smoothness``).
        seed: the random field's seed.

    The field is a smooth random velocity integrated by scaling and squaring, as in
    :func:`regcore.data.random_fields`, so it does not fold.
    """
    if smoothness <= 0 or magnitude < 0:
        raise RegcoreError(f"smoothness must be > 0 and magnitude >= 0, got {smoothness} and {magnitude}")
    source = load_photo(name, size)
    g = torch.Generator().manual_seed(int(seed))
    velocity = smooth_noise(1, 2, (size, size), max(2, round(16 / smoothness)), g)
    integrate = VecInt(7)
    peak = float(integrate(velocity).square().sum(dim=1).sqrt().max())
    # Scaling the velocity, not the displacement, keeps the result a diffeomorphism.
    flow = integrate(velocity * (magnitude / max(peak, 1e-6)))
    target = warp(_t(source), flow)[0, 0].clamp(0, 1)
    return source, target.numpy(), flow[0].numpy()


@dataclass
class Walkthrough:
    """What each step of the method produces on one pair (see :func:`walkthrough`).

    Attributes:
        flow: step 1, the network's ``(2, H, W)`` field in pixels.
        warped: step 2, the source warped by it, ``(H, W)``.
        ncc_before, ncc_after: step 3, local NCC maps ``(H, W)`` in [-1, 1] of (source, target)
            and (warped, target).
        similarity, smoothness, loss: step 3, the loss terms: ``-mean local NCC``, ``Grad``
            smoothness, and ``similarity + reg_weight * smoothness``.
        flow_grad: step 4, ``∂loss/∂flow`` ``(2, H, W)``: how each displacement would be nudged
            (the descent direction is its negative).
        layer_grads: step 4, the gradient norm of each weight tensor of the network, input first.
        model: the checkpoint used, or None for an untrained network.
    """

    flow: np.ndarray
    warped: np.ndarray
    ncc_before: np.ndarray
    ncc_after: np.ndarray
    similarity: float
    smoothness: float
    loss: float
    flow_grad: np.ndarray
    layer_grads: dict[str, float]
    model: str | None


def walkthrough(source: ImageLike, target: ImageLike, model: str | None = None, reg_weight: float = 1.0) -> Walkthrough:
    """Run one training-style forward and backward pass of the network on ``(source, target)``.

    The target is resampled to the source's size. Uses a private copy of the network, so
    gradients never touch the cached model. Without a checkpoint, an untrained network (which
    starts at the identity field) is used and ``model`` is None.
    """
    src = load_image(source, "source")
    src_t, tgt_t = _t(src), _t(_fit(load_image(target, "target"), src.shape))
    name = resolve_model(model)
    net = copy.deepcopy(load_model(name)) if name else RegNet()
    with torch.enable_grad():
        flow = net(src_t, tgt_t)  # step 1: network -> field
        flow.retain_grad()
        warped = warp(src_t, flow)  # step 2: warp
        similarity = NCC()(warped, tgt_t)  # step 3: similarity loss (+ smoothness)
        smoothness = Grad()(flow)
        loss = similarity + reg_weight * smoothness
        loss.backward()  # step 4: backprop, into the field and on into every weight
    with torch.no_grad():
        ncc_before = local_ncc_map(src_t, tgt_t)[0, 0].numpy()
        ncc_after = local_ncc_map(warped, tgt_t)[0, 0].numpy()
    grads = {n: float(p.grad.norm()) for n, p in net.named_parameters() if p.grad is not None and n.endswith("weight")}
    return Walkthrough(
        flow=flow[0].detach().numpy(),
        warped=warped[0, 0].detach().numpy(),
        ncc_before=ncc_before,
        ncc_after=ncc_after,
        similarity=similarity.item(),
        smoothness=smoothness.item(),
        loss=loss.item(),
        flow_grad=flow.grad[0].numpy(),
        layer_grads=grads,
        model=name,
    )


def tiny_regnet() -> RegNet:
    """A three-level RegNet with ~16k weights: trains visibly in a minute on a CPU."""
    return RegNet(enc_features=(8, 16, 16), dec_features=(16, 16, 16), final_features=(8,))


@dataclass
class TrainUpdate:
    """Progress of :func:`train_live` after ``step`` steps.

    Attributes:
        step, total: steps done and planned.
        losses: the training loss of every step so far.
        epe_steps, epe: steps at which the sample pair was checked, and its endpoint error (px).
        source, target, warped: the sample pair (a photograph never trained on) and the source
            warped by the current network's field ``flow`` ``(2, H, W)`` px.
        seconds: wall time so far.
    """

    step: int
    total: int
    losses: list[float]
    epe_steps: list[int]
    epe: list[float]
    source: np.ndarray
    target: np.ndarray
    warped: np.ndarray
    flow: np.ndarray
    true_flow: np.ndarray
    seconds: float
    notes: list[str] = field(default_factory=list)


def train_live(
    steps: int = 300,
    size: int = 48,
    batch: int = 8,
    recipe: str = "hybrid",
    lr: float = 1e-3,
    every: int = 10,
    seed: int = 0,
    sup_weight: float = 1.0,
    kind: str = "mix",
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[TrainUpdate]:
    """Train :func:`tiny_regnet` on generated pairs, yielding a :class:`TrainUpdate` every ``every`` steps.

    Same data (:func:`regcore.data.make_batch` of ``kind``) and losses
    (:func:`regcore.training.compute_loss`: local NCC + smoothness, plus ``sup_weight`` × the
    error to the known field for ``recipe="hybrid"``) as ``train.py``, on ``size``² pairs with
    displacements up to 10% of the side. The sample shown is a photograph deformed by a known
    field, which the network never sees during training. Deterministic for a given ``seed``.
    ``should_stop()`` is checked each step.

    Expect a start, not a trained model: with these defaults, a few hundred steps lower the loss
    and only begin to lower the sample's endpoint error; the shipped checkpoints trained for
    thousands of steps on more data.
    """
    if not 1 <= steps <= 5000 or not 16 <= size <= 256:
        raise RegcoreError(f"steps must be in [1, 5000] and size in [16, 256], got {steps} and {size}")
    torch.manual_seed(seed)
    net = tiny_regnet()
    g = torch.Generator().manual_seed(seed)
    # A clearly visible deformation of a real photograph (displacements up to 10% of the side).
    sample_source, sample_target, sample_flow = deform_photo("camera", size, 0.1 * size, 3, seed)
    cfg = LossConfig(similarity="ncc", recipe=recipe, sup_weight=sup_weight)
    sim, reg = make_losses(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses: list[float] = []
    epe_steps: list[int] = []
    epe: list[float] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor((step - 1) / steps, warmup=0.1)
        pairs = make_batch(batch, (size, size), 0.1 * size, g, kind=kind)
        with torch.enable_grad():
            terms = compute_loss(net(pairs.source, pairs.target), pairs, cfg, sim, reg)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
        opt.step()
        losses.append(terms["total"].item())
        stop = should_stop is not None and should_stop()
        if step % every == 0 or step == steps or stop:
            with torch.no_grad():
                flow = net(_t(sample_source), _t(sample_target))
                warped = warp(_t(sample_source), flow)
            epe_steps.append(step)
            epe.append(endpoint_error(flow[0].numpy(), sample_flow))
            yield TrainUpdate(
                step=step,
                total=steps,
                losses=list(losses),
                epe_steps=list(epe_steps),
                epe=list(epe),
                source=sample_source,
                target=sample_target,
                warped=warped[0, 0].numpy(),
                flow=flow[0].numpy(),
                true_flow=sample_flow,
                seconds=time.perf_counter() - start,
            )
        if stop:
            return


#: Largest side the Compare tab registers at (TV-L1 and "optimize" take seconds beyond this on a CPU).
COMPARE_SIDE = 256
#: The methods the Compare tab runs, in this order (those that need a network only when a checkpoint exists).
COMPARE_METHODS = ("net+patches", "net", "net+refine", "optimize", "tvl1", "dis-fine")


def _fit(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample an ``(H, W)`` image to ``shape`` (anti-aliased when shrinking), values kept in [0, 1]."""
    if image.shape == tuple(shape):
        return image
    from skimage.transform import resize

    return np.clip(resize(image, shape, anti_aliasing=image.shape[0] > shape[0]), 0, 1).astype(np.float32)


def compare_methods(
    source: ImageLike,
    target: ImageLike,
    model: str | None = None,
    max_side: int = COMPARE_SIDE,
    refine_steps: int | None = None,
    progress: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
) -> list[RegistrationResult]:
    """Register one pair with each of :data:`COMPARE_METHODS` through :func:`regcore.register` and score them the same way.

    The network's methods run only when a checkpoint exists. The pair is first resampled so the
    longer side is at most ``max_side`` (the target to the source's size), and every method gets
    those same pixels; a note says so. ``refine_steps`` goes to :func:`register` (None: its
    defaults; methods without steps ignore it). ``progress(method)`` is called before each method.
    ``timeout_s`` bounds the whole comparison, reading the images included (RegcoreError when spent).
    """
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    src = load_image(source, "source")
    tgt = load_image(target, "target")
    scale = min(1.0, max_side / max(src.shape))
    work = (max(1, round(src.shape[0] * scale)), max(1, round(src.shape[1] * scale)))
    if min(work) < MIN_SIDE:
        raise RegcoreError(f"source: {src.shape[1]}x{src.shape[0]} would be compared at {work[1]}x{work[0]}, under {MIN_SIDE} px a side")
    notes = [f"compared at {work[1]}x{work[0]} (longer side capped at {max_side})"] if work != src.shape else []
    src, tgt = _fit(src, work), _fit(tgt, work)
    name = resolve_model(model)
    results = []
    for method in (m for m in COMPARE_METHODS if name or not METHODS[m].network):
        if progress is not None:
            progress(method)
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            raise RegcoreError(f"the comparison took longer than {timeout_s:g} s and was stopped before {method!r}")
        result = register(src, tgt, method=method, model=name, refine_steps=refine_steps, timeout_s=left)
        result.notes[:0] = notes
        results.append(result)
    return results
