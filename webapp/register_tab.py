"""The Register tab: upload a pair, choose a method, see the warped image, the field and the scores.

:func:`register_pair` is the computation's glue (regcore.register -> pictures, scores, files);
:func:`build_register_tab` lays out the components and wires the events. Medical scans (NIfTI,
DICOM, MetaImage, NRRD) and label maps come in through file inputs (an image input only takes
pictures a browser can show); :func:`show_scans` previews the chosen slice of a scan in the image
boxes and shows the slice selector when a scan is a 3-D volume.

Everything shown and saved is at the registered resolution (``result.registered``: the longer
side capped at 512 px), so a request's time, memory and files stay proportional to the work
whatever the size of the upload: a 4096² pair gives a 512² field (2 MB), not a 134 MB one. The
field's scale to the source's pixels is in metrics.json (``field_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

import regcore
from regcore import viz
from regcore.pipeline import DEFAULT_METHOD, DEFAULT_REFINE_STEPS, FALLBACK_METHOD, METHODS
from regcore.volumes import AXES, Slicing, medical_format, scan_info

from .common import HEAVY, Budget, UploadedImage, fast_png, output_dir, picture_files, round_sig, user_errors

__all__ = ["EXAMPLES", "MEDICAL_EXAMPLES", "RegisterTab", "build_register_tab", "register_pair", "show_scans", "steps_for_method"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [
    (ROOT / "examples" / f"{name}_source.png", ROOT / "examples" / f"{name}_target.png", label)
    for name, label in (("camera", "camera"), ("coins", "coins"), ("astronaut_gamma", "astronaut, contrast changed"))
]
#: (source scan, target scan, source labels, target labels, slice axis, slice index, label): the head phantom with its label maps.
MEDICAL_EXAMPLES = [
    (*(ROOT / "examples" / f"{name}_{role}.nii.gz" for role in ("source", "target", "source_labels", "target_labels")), "z", index, label)
    for name, index, label in (("phantom", 0, "head phantom, 2-D NIfTI with label maps"), ("phantom3d", 6, "head phantom, 3-D volume"))
]


def _default_method() -> str:
    return DEFAULT_METHOD if regcore.available_models() else FALLBACK_METHOD


def _scores_table(result: regcore.RegistrationResult) -> list[list]:
    """Rows of (score, before, after) for the scores table; the time and field checks have no "before"."""
    b, a = result.before, result.after
    rows = [
        ["MSE (lower is better)", b["mse"], a["mse"]],
        ["global NCC (higher is better)", b["ncc"], a["ncc"]],
        ["local NCC, 9×9 (higher is better)", b["local_ncc"], a["local_ncc"]],
        ["folding % (Jacobian ≤ 0)", None, a["folding_percent"]],
        ["min Jacobian determinant", None, a["jacobian_min"]],
        ["time (s)", None, result.time_s],
    ]
    return [[name, round_sig(before), round_sig(after)] for name, before, after in rows]


def _summary(result: regcore.RegistrationResult) -> str:
    b, a = result.before, result.after
    model = f" with model `{result.model}`" if result.model else ""
    lines = [
        f"**{result.method}**{model} in **{result.time_s:.2f} s** · local NCC {b['local_ncc']:.3f} → **{a['local_ncc']:.3f}**, "
        f"MSE {b['mse']:.4f} → **{a['mse']:.4f}**, folding {a['folding_percent']:.3f}%"
    ]
    if result.source_shape is not None:
        (h, w), (full_h, full_w) = result.source.shape, result.source_shape
        lines.append(f"- shown, scored and saved at {w}x{h}, the registered size (the source is {full_w}x{full_h})")
    lines += _label_summary(result)
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def _label_summary(result: regcore.RegistrationResult) -> list[str]:
    """The summary's lines on Dice and the field's size (in mm when the files give a spacing)."""
    shift = result.displacement
    in_mm = f" = {shift['mean_mm']:.2f} / {shift['max_mm']:.2f} mm" if "mean_mm" in shift else ""
    lines = [f"Displacement mean / max {shift['mean_px']:.2f} / {shift['max_px']:.2f} px{in_mm}"]
    if result.dice is not None and result.dice["before"]["mean"] is not None:
        lines[0] = f"**Dice** {result.dice['before']['mean']:.3f} → **{result.dice['after']['mean']:.3f}** · " + lines[0]
    return lines


def _dice_table(result: regcore.RegistrationResult) -> list[list]:
    """Rows of (label, Dice before, Dice after), the mean first; empty without both label maps."""
    if result.dice is None or result.dice["before"]["mean"] is None:
        return []
    before, after = result.dice["before"], result.dice["after"]
    rows = [["mean", before["mean"], after["mean"]]]
    rows += [[f"label {label}", score, after["per_label"][label]] for label, score in before["per_label"].items()]
    return [[name, round_sig(b), round_sig(a)] for name, b, a in rows]


def _contours(result: regcore.RegistrationResult, out: Path) -> str | None:
    """Label outlines over the source (before) and the warped source (after), target's in orange: a PNG, or None."""
    if result.source_labels is None:
        return None
    target = result.target_labels if result.target_labels is not None else np.zeros_like(result.source_labels)
    strip = viz.image_strip(
        [viz.label_contours(result.source, result.source_labels, target), viz.label_contours(result.warped, result.warped_labels, target)]
    )
    return fast_png(out / "contours.png", strip)


def register_pair(
    source: str | None,
    target: str | None,
    method: str = DEFAULT_METHOD,
    model: str | None = None,
    refine_steps: float = DEFAULT_REFINE_STEPS,
    source_labels: str | None = None,
    target_labels: str | None = None,
    source_scan: str | None = None,
    target_scan: str | None = None,
    slice_axis: str = "z",
    slice_index: float | None = None,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way of asking for a progress bar)
):
    """Register ``source`` onto ``target`` and return every picture and score the Register tab shows.

    ``source`` and ``target`` may be medical files too (API clients); ``source_scan`` / ``target_scan``
    (the file inputs of the page), when given, replace them. ``slice_axis`` / ``slice_index``: the
    slice of 3-D volumes (None: the middle). ``source_labels`` / ``target_labels``: label maps.

    Returns, in order: warped source, checkerboard (before, after), |difference| strip (before | after),
    quiver plot, deformed grid, Jacobian map, scores table, summary, [flow.npy, warped.png, metrics.json
    (+ warped_labels.png)], Dice table (label, before, after), label outlines (before | after) or None;
    all at the registered resolution, within one time budget (:class:`webapp.common.Budget`).
    """
    budget = Budget()
    source, target = source_scan or source, target_scan or target
    if source is None or target is None:
        raise gr.Error("Upload a source and a target image (or click one of the examples).")

    def report(done: int, total: int, loss: float) -> None:
        progress((done, total), desc=f"optimising the field (loss {loss:.4f})")

    with user_errors():
        result = regcore.register(
            source,
            target,
            method=method,
            model=model or None,
            refine_steps=int(refine_steps),
            progress=report,
            timeout_s=budget.remaining(),
            source_labels=source_labels,
            target_labels=target_labels,
            slice_axis=slice_axis,
            slice_index=None if slice_index is None else int(slice_index),
        ).registered
    src, tgt, warped, flow = result.source, result.target, result.warped, result.flow
    out = output_dir()
    files = result.save(out)  # the scores and the Jacobian are computed here, once
    budget.check("while scoring the result")
    # Pictures go out as PNG files written here with fast compression: handing gradio arrays would
    # re-encode each at PNG's default level, several times slower (it matters for latency).
    pictures = {
        "checker_before": viz.checkerboard(src, tgt),
        "checker_after": viz.checkerboard(warped, tgt),
        # One picture, not a second slider: each returned file is one more download for API clients.
        "difference": viz.image_strip([viz.difference_image(src, tgt), viz.difference_image(warped, tgt)]),
    }
    paths = picture_files(pictures, out)
    contours = _contours(result, out)
    budget.check("while drawing the pictures")
    figures = viz.quiver_figure(tgt, flow), viz.grid_figure(src, flow), viz.jacobian_figure(flow, jacobian=result.jacobian)
    budget.check("while drawing the figures")
    return (
        str(files["warped"]),
        (paths["checker_before"], paths["checker_after"]),
        paths["difference"],
        *figures,
        _scores_table(result),
        _summary(result),
        [str(files[name]) for name in ("flow", "warped", "metrics", "warped_labels") if name in files],
        _dice_table(result),
        contours,
    )


def show_scans(source_scan: str | None, target_scan: str | None, axis: str = "z", index: float | None = None):
    """Previews of the scans' slices for the image boxes (unchanged where no scan is given), and the
    slice selector: shown when a scan is a 3-D volume, its range that volume's depth along ``axis``,
    its value ``index`` (the middle when None or out of range)."""
    scans = [scan for scan in (source_scan, target_scan) if scan]
    with user_errors():  # a picture (PNG ...) in a scan input is a 2-D image too
        volumes = [info for info in (scan_info(scan, "scan") for scan in scans if medical_format(scan)) if info.is_volume]
    depth = volumes[0].size[AXES.index(axis)] if volumes else 1
    at = depth // 2 if index is None or not 0 <= int(index) < depth else int(index)
    previews = []
    out = output_dir() if scans else None
    for role, scan in (("source", source_scan), ("target", target_scan)):
        if not scan:
            previews.append(gr.update())
            continue
        with user_errors():
            image = regcore.load_image(scan, role, slicing=Slicing(axis, at))
        previews.append(fast_png(out / f"{role}_slice.png", image))
    visible = bool(volumes)
    return (*previews, gr.Radio(visible=visible), gr.Slider(visible=visible, maximum=max(depth - 1, 1), value=at))


def steps_for_method(method: str):
    """The steps slider follows the method: its default steps per level, or greyed out for a method without steps."""
    steps = METHODS[method].default_steps
    return gr.Slider(interactive=False) if steps is None else gr.Slider(value=steps, interactive=True)


def _before_after_table(headers: list[str], label: str, elem_id: str) -> gr.Dataframe:
    """A read-only table of (name, before, after) rows."""
    return gr.Dataframe(headers=headers, datatype=["str", "number", "number"], label=label, elem_id=elem_id, interactive=False)


@dataclass
class RegisterTab:
    """The Register tab's components that the other tabs read (the pair and the model)."""

    source: gr.Image
    target: gr.Image
    model: gr.Dropdown


def build_register_tab() -> RegisterTab:
    """The Register tab's components and events (inside a ``gr.Blocks``); API endpoint ``/register``."""
    models = list(regcore.available_models())
    model_info = "checkpoints found in checkpoints/" if models else "no checkpoint found: only methods without a network work"
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                source = UploadedImage(label="Source (moving)", type="filepath", elem_id="source", height=260)
                target = UploadedImage(label="Target (fixed)", type="filepath", elem_id="target", height=260)
            with gr.Row():
                choices = [(m.label, name) for name, m in METHODS.items()]
                method = gr.Dropdown(choices, value=_default_method(), label="Method", elem_id="method")
                model = gr.Dropdown(models, value=models[0] if models else None, label="Model", info=model_info, elem_id="model")
            steps = gr.Slider(
                0,
                300,
                value=DEFAULT_REFINE_STEPS,
                step=5,
                label="Optimisation steps",
                info="steps per pyramid level: up to 3 levels from the network's field, or down to 16 px for optimisation only",
            )
            with gr.Accordion("Medical scans (NIfTI, DICOM, MetaImage, NRRD) and label maps (Dice)", open=False, elem_id="medical"):
                with gr.Row():
                    source_scan = gr.File(label="Source scan (replaces the source image)", elem_id="source-scan", height=120)
                    target_scan = gr.File(label="Target scan (replaces the target image)", elem_id="target-scan", height=120)
                with gr.Row():
                    slice_axis = gr.Radio(list(AXES), value="z", label="Slice axis (voxel axis)", visible=False, elem_id="slice-axis")
                    # The range follows the uploaded volume (show_scans); the initial maximum bounds what
                    # gradio accepts before that (an example's or an API client's index), so it is wide.
                    slice_index = gr.Slider(0, 4095, value=0, step=1, label="Slice index", visible=False, elem_id="slice-index")
                with gr.Row():
                    source_labels = gr.File(label="Source label map (integer PNG/TIFF, or as a scan)", elem_id="source-labels", height=120)
                    target_labels = gr.File(label="Target label map: Dice before and after", elem_id="target-labels", height=120)
            run = gr.Button("Register", variant="primary", elem_id="register-btn")
            examples = gr.Examples(
                [[str(s), str(t)] for s, t, _ in EXAMPLES],
                [source, target],
                example_labels=[label for _, _, label in EXAMPLES],
                label="Examples (photos deformed by known fields): click one to register it",
                cache_examples=False,
            )
            medical_examples = gr.Examples(
                [[str(path) for path in row[:4]] + list(row[4:6]) for row in MEDICAL_EXAMPLES],
                [source_scan, target_scan, source_labels, target_labels, slice_axis, slice_index],
                example_labels=[row[-1] for row in MEDICAL_EXAMPLES],
                label="Medical example (a head phantom deformed by a known field, labels moved with it): click to register",
                cache_examples=False,
            )
        with gr.Column(scale=3):
            warped = gr.Image(label="Warped source", format="png", elem_id="warped", interactive=False, height=300)
            summary = gr.Markdown(elem_id="summary")
            scores_label = "Scores: source vs target (before) and warped vs target (after)"
            scores = _before_after_table(["score", "before", "after"], scores_label, "scores")
    with gr.Row():
        quiver = gr.Plot(label="Displacement field", elem_id="quiver")
        grid = gr.Plot(label="Deformed grid", elem_id="grid")
    with gr.Row():
        checker = gr.ImageSlider(label="Checkerboard with target: before | after", format="png", elem_id="checker")
        difference = gr.Image(label="|diff| to target: before | after", format="png", interactive=False, elem_id="difference")
        jacobian = gr.Plot(label="Jacobian determinant", elem_id="jacobian")
    files = gr.File(
        label="Downloads, at the registered size: flow.npy (2, h, w) pixels, warped.png, metrics.json (with the field's scale)",
        file_count="multiple",
        elem_id="files",
    )
    with gr.Row():
        dice_label = "Dice of the source's labels with the target's (before) and of the warped ones (after, in warped_labels.png)"
        dice = _before_after_table(["label", "Dice before", "Dice after"], dice_label, "dice")
        contours = gr.Image(
            label="Label outlines: source's (blue) vs target's (orange), white where they agree; before | after",
            format="png",
            interactive=False,
            height=320,
            elem_id="contours",
        )

    outputs = [warped, checker, difference, quiver, grid, jacobian, scores, summary, files, dice, contours]
    inputs = [source, target, method, model, steps, source_labels, target_labels, source_scan, target_scan, slice_axis, slice_index]
    run.click(register_pair, inputs, outputs, api_name="register", **HEAVY)
    examples.load_input_event.then(register_pair, inputs, outputs, api_visibility="private", **HEAVY)
    medical_examples.load_input_event.then(register_pair, inputs, outputs, api_visibility="private", **HEAVY)
    method.change(steps_for_method, method, steps, api_visibility="private", queue=False)
    # A scan shows its slice in the image box; a new picture uploaded there replaces the scan.
    scan_views = [source, target, slice_axis, slice_index]
    # Reading a scan's slice decodes the file: one more heavy event in the shared CPU budget.
    for scan in (source_scan, target_scan):
        scan.change(show_scans, [source_scan, target_scan, slice_axis], scan_views, api_visibility="private", **HEAVY)
    slice_axis.change(show_scans, [source_scan, target_scan, slice_axis], scan_views, api_visibility="private", **HEAVY)
    slice_index.release(show_scans, [source_scan, target_scan, slice_axis, slice_index], scan_views, api_visibility="private", **HEAVY)
    for image, scan in ((source, source_scan), (target, target_scan)):
        image.upload(lambda: None, None, scan, api_visibility="private", queue=False)
        scan.clear(lambda: None, None, image, api_visibility="private", queue=False)
    return RegisterTab(source, target, model)
