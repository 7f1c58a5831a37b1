"""``register(source, target)``: the one call most users need, and what it returns.

``register()`` runs the pipeline of :mod:`regcore.pipeline` (prepare -> initial field ->
refinement -> result); the methods it can run are :data:`regcore.pipeline.METHODS`. Its first and
last steps are :func:`load_inputs` (images, label maps, spacing) and :func:`finish` (the result),
which :mod:`regcore.many` shares when it registers many pairs with batched network passes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import RegcoreError
from .io import ImageLike, input_label, load_labels, save_image
from .labels import check_labels, label_overlap, resize_labels, warp_labels
from .metrics import displacement_stats, image_scores, jacobian_determinant, jacobian_summary

# The pipeline's constants are importable from here too, where they were first defined.
from .pipeline import DEFAULT_OPTIMIZE_STEPS as DEFAULT_OPTIMIZE_STEPS
from .pipeline import DEFAULT_REFINE_STEPS as DEFAULT_REFINE_STEPS
from .pipeline import (
    DEFAULT_REG_WEIGHT,
    NET_MAX_SIDE,
    Choice,
    Options,
    Progress,
    Work,
    check_time,
    choose_method,
    load_pair,
    prepare,
    working_field,
)
from .pipeline import INVERTED_BELOW as INVERTED_BELOW
from .pipeline import METHODS as METHODS
from .pipeline import MIN_SIDE as MIN_SIDE
from .pipeline import NET_SIDE as NET_SIDE
from .pipeline import POLARITIES as POLARITIES
from .pipeline import PRESMOOTH_MODES as PRESMOOTH_MODES
from .pipeline import REFINE_LEVELS as REFINE_LEVELS
from .volumes import Slicing, medical_format, pixel_spacing
from .warp import resize_flow, warp

__all__ = ["Inputs", "RegistrationResult", "finish", "load_inputs", "register"]


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, np.float32))[None]


@dataclass(eq=False)
class RegistrationResult:
    """What :func:`register` returns.

    Attributes:
        source, target: the ``(H, W)`` float32 images as registered (target at the source's size).
        method: ``"net+patches"``, ``"net"``, ``"net+refine"``, ``"optimize"`` (or another method's name).
        model: the checkpoint used, or None.
        time_s: wall time of the registration itself (loading, scaling back and scoring excluded).
        registered_flow: ``(2, h, w)`` float32 px, the field as found at the registered resolution
            ``(h, w)`` (the source's size with the longer side capped at ``max_side``; the same
            array as ``flow`` when nothing was capped).
        registered_source, registered_target: ``(h, w)`` the pair at that resolution (the target's
            contrast as given).
        notes: what was done that the caller did not ask for (resizing, fallbacks), one line each.
        spacing: millimetres per pixel ``(rows, columns)`` of the source's grid when its file
            records it (medical formats), else None.
        source_labels, target_labels: ``int32`` ``(H, W)`` label maps when given (the target's on
            the source's grid), else None; ``warped_labels`` is the source's, warped.
        inputs: the files registered (``source``, ``target``, ``source_labels``,
            ``target_labels``, as given) and ``slice`` when a medical file was read.
        source_shape: the full source's ``(H, W)`` when this result is :attr:`registered`, the view
            of a larger one at its registered resolution; None otherwise.

    Computed on first use and then kept (a caller who wants only part of it should not pay for the
    rest; at 4096² the full-size field alone is 134 MB, and scoring costs about a network pass):

        flow: ``(2, H, W)`` float32 displacement in pixels (channel 0 rows, 1 columns) with
            ``warped[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``: ``registered_flow``
            resampled to the source's size, its vectors scaled (:func:`regcore.warp.resize_flow`).
        warped: ``(H, W)`` float32 in [0, 1], the source warped onto the target.
        jacobian: ``(H, W)`` Jacobian determinant of ``p -> p + flow(p)`` (≤ 0 where it folds).
        before, after: scores of (source, target) and of (warped, target): ``mse``, ``ncc``,
            ``local_ncc``; ``after`` adds ``folding_percent`` and ``jacobian_min``.
        registered: the same registration at its registered resolution, as a result of its own
            (``flow`` = ``registered_flow``; pictures, scores, label maps and spacing at that
            size; this result itself when nothing was capped): what the app shows and saves,
            whatever the input's size.
    """

    source: np.ndarray
    target: np.ndarray
    method: str
    model: str | None
    time_s: float
    registered_flow: np.ndarray
    registered_source: np.ndarray
    registered_target: np.ndarray
    notes: list[str] = field(default_factory=list)
    spacing: tuple[float, float] | None = None
    source_labels: np.ndarray | None = None
    target_labels: np.ndarray | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    source_shape: tuple[int, int] | None = None

    @property
    def shrunk(self) -> bool:
        """Whether the registration ran at a smaller size than the source's."""
        return self.registered_flow.shape[1:] != self.source.shape

    @cached_property
    def flow(self) -> np.ndarray:
        if not self.shrunk:
            return self.registered_flow
        return resize_flow(_tensor(self.registered_flow), self.source.shape)[0].numpy()

    @cached_property
    def warped(self) -> np.ndarray:
        with torch.inference_mode():
            # Bilinear weights can sum to 1 + 1 ulp in float32: clamp to keep the [0, 1] contract.
            return warp(_tensor(self.source)[None], _tensor(self.flow)).clamp_(0.0, 1.0)[0, 0].numpy()

    @cached_property
    def jacobian(self) -> np.ndarray:
        return jacobian_determinant(self.flow)

    @cached_property
    def before(self) -> dict[str, float]:
        return image_scores(self.source, self.target)

    @cached_property
    def after(self) -> dict[str, float]:
        return image_scores(self.warped, self.target) | jacobian_summary(self.jacobian)

    @cached_property
    def registered(self) -> RegistrationResult:
        if not self.shrunk:
            return self
        (h, w), (full_h, full_w) = self.registered_flow.shape[1:], self.source.shape
        small = self.registered_source, self.registered_target
        labels = [None if m is None else resize_labels(m, (h, w)) for m in (self.source_labels, self.target_labels)]
        # A registered pixel spans (full - 1) / (small - 1) source pixels (resize_flow's grid).
        spacing = None if self.spacing is None else (self.spacing[0] * (full_h - 1) / (h - 1), self.spacing[1] * (full_w - 1) / (w - 1))
        return RegistrationResult(
            *small,
            self.method,
            self.model,
            self.time_s,
            self.registered_flow,
            *small,
            notes=self.notes,
            spacing=spacing,
            source_labels=labels[0],
            target_labels=labels[1],
            inputs=self.inputs,
            source_shape=(full_h, full_w),
        )

    @property
    def mse(self) -> float:
        return self.after["mse"]

    @property
    def ncc(self) -> float:
        return self.after["ncc"]

    @property
    def local_ncc(self) -> float:
        return self.after["local_ncc"]

    @property
    def folding_percent(self) -> float:
        return self.after["folding_percent"]

    @cached_property
    def displacement(self) -> dict[str, float]:
        """The field's summary: mean and largest displacement in pixels, and in mm when ``spacing`` is known."""
        return displacement_stats(self.flow, self.spacing)

    @cached_property
    def warped_labels(self) -> np.ndarray | None:
        """The source's label map warped by ``flow`` (nearest neighbour, :mod:`regcore.labels`), or None."""
        return None if self.source_labels is None else warp_labels(self.source_labels, self.flow)

    @cached_property
    def dice(self) -> dict | None:
        """Dice per label and mean (:func:`regcore.labels.label_overlap`) of the source's labels
        (``before``) and the warped ones (``after``) against the target's; None without both maps."""
        if self.source_labels is None or self.target_labels is None:
            return None
        target = self.target_labels
        return {"before": label_overlap(self.source_labels, target), "after": label_overlap(self.warped_labels, target)}

    def metrics(self) -> dict:
        """JSON-ready summary: method, model, the field's grid and scale, spacing, before/after
        scores, the field's displacement, Dice (with label maps), time, notes and the input files.

        ``shape`` is the grid of ``flow`` (and of flow.npy); ``source_shape`` the source's.
        ``field_scale`` (rows, columns) takes that grid to the source's: a displacement ``d`` at
        grid pixel ``p`` is ``d * field_scale`` at source pixel ``p * field_scale``
        (:func:`regcore.warp.resize_flow` does both); ``[1, 1]`` when they are the same.
        """
        shape = self.flow.shape[1:]
        full = self.source_shape or shape
        return {
            "method": self.method,
            "model": self.model,
            "shape": list(shape),
            "source_shape": list(full),
            "field_scale": [(big - 1) / max(small - 1, 1) for big, small in zip(full, shape, strict=True)],
            "spacing_mm": None if self.spacing is None else list(self.spacing),
            "before": self.before,
            "after": self.after,
            "displacement": self.displacement,
            "dice": self.dice,
            "time_s": self.time_s,
            "notes": self.notes,
            "inputs": self.inputs,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``warped.png``, ``flow.npy``, ``warped_labels.png`` (with source labels; 8- or
        16-bit, the label values themselves) and, last, ``metrics.json`` into ``out_dir`` (created
        if needed). ``metrics.json`` is written last and whole (renamed into place), so its
        presence means the folder is complete. For files proportional to the work whatever the
        input's size, save :attr:`registered`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"warped": out / "warped.png", "flow": out / "flow.npy"}
        save_image(paths["warped"], self.warped)
        np.save(paths["flow"], self.flow.astype(np.float32, copy=False))
        if self.warped_labels is not None:
            paths["warped_labels"] = out / "warped_labels.png"
            dtype = np.uint8 if self.warped_labels.max(initial=0) <= 255 else np.uint16
            Image.fromarray(self.warped_labels.astype(dtype)).save(paths["warped_labels"])
        paths["metrics"] = out / "metrics.json"
        partial = out / "metrics.json.part"
        partial.write_text(json.dumps(self.metrics(), indent=2) + "\n")
        partial.replace(paths["metrics"])
        return paths


@dataclass
class Inputs:
    """What :func:`load_inputs` read: the images ``(H, W)`` float32 in [0, 1], the source's pixel
    spacing (mm, or None), the label maps as ``int32`` (the target's on the source's grid, or
    None), and the input files' names for ``metrics.json``."""

    source: np.ndarray
    target: np.ndarray
    spacing: tuple[float, float] | None
    source_labels: np.ndarray | None
    target_labels: np.ndarray | None
    names: dict[str, str]


def load_inputs(
    source: ImageLike,
    target: ImageLike,
    source_labels: ImageLike | None,
    target_labels: ImageLike | None,
    slicing: Slicing,
    notes: list[str],
) -> Inputs:
    """Step 1 of :func:`register`: read and check the pair and its label maps.

    Each label map must have its image's size (a clear ImageError otherwise); the target's is
    resampled with the target (nearest neighbour) to the source's grid. Target labels without
    source labels are refused (there is nothing to compare them with).
    """
    src, tgt = load_pair(source, target, notes, slicing)
    spacing = pixel_spacing(source, slicing, "source")
    target_spacing = pixel_spacing(target, slicing, "target")
    if spacing and target_spacing and not np.allclose(spacing, target_spacing, rtol=0.01):
        sizes = " and ".join(f"{rows:.4g}x{cols:.4g}" for rows, cols in (spacing, target_spacing))
        notes.append(f"source and target pixel spacings differ ({sizes} mm): regcore registers pixel grids; millimetres are the source's")
    if target_labels is not None and source_labels is None:
        raise RegcoreError("target labels were given without source labels: give both (Dice), or source labels alone (to warp them)")
    maps = []
    for given, role, image in ((source_labels, "source", src), (target_labels, "target", tgt)):
        labels = None if given is None else load_labels(given, f"{role} labels", notes=notes, slicing=slicing)
        if labels is not None:
            check_labels(labels, image.shape, input_label(given, f"{role} labels"), role)
        maps.append(labels)
    given = {"source": source, "target": target, "source_labels": source_labels, "target_labels": target_labels}
    names = {key: os.fspath(value) for key, value in given.items() if isinstance(value, (str, os.PathLike))}
    if any(medical_format(value) for value in given.values()):
        names["slice"] = str(slicing)
    target_on_source = None if maps[1] is None else resize_labels(maps[1], src.shape)
    return Inputs(src, tgt, spacing, maps[0], target_on_source, names)


def finish(inputs: Inputs, work: Work, choice: Choice, flow: Tensor | None, start: float, shared_s: float = 0.0) -> RegistrationResult:
    """Last step of :func:`register`: the result, holding the field at the registered resolution
    (scaled to the source's size, with the warped source, only on first use).

    ``time_s`` is the time since ``start`` plus ``shared_s`` (a share of work done for several
    pairs at once, such as a batched network pass).
    """

    def numpy(tensor: Tensor) -> np.ndarray:  # (1, C, h, w) -> (C, h, w), or (h, w) for one channel
        return tensor[0].squeeze(0).cpu().numpy().astype(np.float32, copy=False)

    target = numpy(work.full_target)
    shrunk = work.size != inputs.source.shape
    return RegistrationResult(
        source=inputs.source,
        target=target,
        method=choice.method,
        model=choice.model,
        time_s=time.perf_counter() - start + shared_s,
        registered_flow=numpy(working_field(work, flow)),
        registered_source=numpy(work.source) if shrunk else inputs.source,
        registered_target=numpy(work.given_target) if shrunk else target,
        notes=work.notes,
        spacing=inputs.spacing,
        source_labels=inputs.source_labels,
        target_labels=inputs.target_labels,
        inputs=inputs.names,
    )


def register(
    source: ImageLike,
    target: ImageLike,
    *,
    method: str | None = None,
    model: str | os.PathLike | None = None,
    refine_steps: int | None = None,
    similarity: str = "ncc",
    reg_weight: float = DEFAULT_REG_WEIGHT,
    device: str | torch.device = "cpu",
    max_side: int = NET_MAX_SIDE,
    progress: Progress | None = None,
    timeout_s: float | None = None,
    polarity: str = "auto",
    presmooth: str = "auto",
    polish: bool = True,
    source_labels: ImageLike | None = None,
    target_labels: ImageLike | None = None,
    slice_axis: str = "z",
    slice_index: int | None = None,
) -> RegistrationResult:
    """Register ``source`` to ``target``: find ``flow`` with ``warp(source, flow) ≈ target``.

    Args:
        source, target: numpy arrays, PIL images, file paths or file bytes (see
            :func:`regcore.io.load_image`). The target is resampled to the source's size when
            they differ, and the result is in the source's pixel grid.
        method: a name in :data:`regcore.METHODS`: ``"net+patches"`` (the default: ``"net"``'s
            field fused with a patch search's, :mod:`regcore.patches`, where that fits the target
            clearly better: objects moving on their own, periodic textures, large motion),
            ``"net"`` (one network pass at about ``NET_SIDE`` px, then a Lucas–Kanade pyramid up to
            full resolution, see ``polish``), ``"net+refine"`` (the network's field, then ``refine_steps`` of per-pair Adam
            optimisation), ``"optimize"`` (optimisation only, multi-resolution, no network), or a
            classical optical flow: ``"tvl1"``, ``"ilk"`` (scikit-image), ``"dis"``,
            ``"dis-fast"``, ``"dis-fine"``, ``"farneback"`` (OpenCV; :mod:`regcore.classical`).
            Default: ``DEFAULT_METHOD`` when a checkpoint is available, else ``"optimize"`` (and
            a note says so).
        model: a checkpoint folder or a shipped checkpoint's name (``regcore.available_models()``);
            default the shipped local-NCC model. ``"hf:user/repo"`` fetches a model from the
            Hugging Face Hub: the only case in which ``register()`` makes a network request (an
            unknown name without the prefix is an error listing the shipped models). Used by the
            network methods only.
        refine_steps: optimisation steps per pyramid level (``"net+refine"``: up to
            ``REFINE_LEVELS`` levels starting from the network's field, default
            ``DEFAULT_REFINE_STEPS``; ``"optimize"``: every level down to 16 px, default
            ``DEFAULT_OPTIMIZE_STEPS``); other methods take no steps and ignore it.
        similarity: what the optimisation maximises: ``"ncc"`` (local NCC), ``"ncc2"``,
            ``"gncc"`` or ``"mse"``.
        reg_weight: smoothness weight of the optimisation.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        max_side: images with a longer side are registered at this size (a note says so); the
            field is scaled back on first use of ``result.flow``, and ``result.registered`` is
            the result at the registered size. The shorter side must stay at least ``MIN_SIDE``.
        progress: called as ``progress(done, total, loss)`` during optimisation.
        timeout_s: time budget in seconds for the whole call, from decoding the images on; once
            it is exceeded, a RegcoreError stops the work (checked after reading the images,
            between the steps and after each optimisation step; a network pass or a classical
            method is not interrupted, and scaling the field back happens later, on first use
            of ``flow``). None: no limit.
        polarity: ``"auto"``: when source and target are negatively correlated as whole images
            (below ``INVERTED_BELOW``), the target's contrast is taken as inverted and the field
            is found against ``1 - target`` (a note says so; ``warped`` and the scores still use
            the target as given). Signed local NCC, which the shipped models learned, reads an
            inversion as a mismatch everywhere. Then, when the two intensity distributions clearly
            differ (a steep gamma or sigmoid of contrast, :mod:`regcore.contrast`), the target's
            intensities are matched to the source's for the search (a note says so).
            ``"keep"``: neither.
        presmooth: what the optimisation (``"net+refine"``, ``"optimize"``) compares. ``"auto"``:
            when :func:`regcore.noise.noise_std` finds noise above ``NOISY_ABOVE`` in either
            image, both are smoothed (Gaussian, ``SMOOTH_SIGMA`` px) and compared over a wider
            window (``SMOOTH_WIN``), which keeps the field from fitting the noise (a note says
            so); clean images are compared as they are. ``"on"`` / ``"off"``: always / never.
            ``warped`` and the scores always use the images as given.
        polish: ``"net"`` and ``"net+patches"`` only: refine the network's field by Lucas–Kanade steps on locally
            normalised images over a pyramid up to full resolution (:func:`regcore.polish.polish`),
            which corrects the network where the images are textured and catches what it missed.
            False: the network's field as it is (resampled to the images' size).
        source_labels, target_labels: label maps (segmentations) of the source and the target,
            anything :func:`regcore.io.load_labels` reads, each of its image's size. The source's
            is warped with the field (``result.warped_labels``); with both, ``result.dice``
            holds Dice per label and its mean, before and after. Source labels alone are warped
            only (e.g. to carry an atlas' segmentation onto the target).
        slice_axis, slice_index: for 3-D medical volumes (NIfTI, DICOM, MetaImage, NRRD; images
            and label maps alike), the 2-D slice registered: the voxel axis ``"x"``, ``"y"`` or
            ``"z"`` it is perpendicular to and its index (default: the middle slice). Ignored for
            2-D images. See :mod:`regcore.volumes`.

    Raises:
        ImageError: an input is not a usable image (unreadable, NaN, larger than
            ``regcore.io.MAX_PIXELS``, ...). CheckpointError: the model cannot be loaded.
        RegcoreError: another invalid argument, a side under ``MIN_SIDE`` px, the time budget
            exceeded, or an optimisation that diverged.
    """
    options = Options(
        method, model, refine_steps, similarity, reg_weight, device, max_side, progress, timeout_s, polarity, presmooth, polish
    )
    notes: list[str] = []
    slicing = Slicing(slice_axis, slice_index)
    received = time.perf_counter()  # timeout_s counts from here, decoding included
    inputs = load_inputs(source, target, source_labels, target_labels, slicing, notes)  # 1. prepare: read and check,
    choice = choose_method(options, notes)  # pick the method and load its network,
    check_time(options, received, "while reading the images")
    start = time.perf_counter()
    work = prepare(inputs.source, inputs.target, options, choice, notes, received)  # make the working pair
    strategy = METHODS[choice.method]
    flow = strategy.start(work)  # 2. initial field (None: zero)
    check_time(options, received, "after the initial field")
    flow = strategy.refine(work, flow)  # 3. refinement
    check_time(options, received, "after the refinement")
    return finish(inputs, work, choice, flow, start)  # 4. result, at the registered resolution
