"""The Register tab: upload a pair, choose a method, see the warped image, the field and the scores.

:func:`register_pair` is the computation's glue (regcore.register -> pictures, scores, files);
:func:`build_register_tab` lays out the components and wires the events.

Everything shown and saved is at the registered resolution (``result.registered``: the longer
side capped at 512 px), so a request's time, memory and files stay proportional to the work
whatever the size of the upload: a 4096² pair gives a 512² field (2 MB), not a 134 MB one. The
field's scale to the source's pixels is in metrics.json (``field_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

import regcore
from regcore import viz
from regcore.pipeline import DEFAULT_METHOD, DEFAULT_REFINE_STEPS, FALLBACK_METHOD, METHODS

from .common import HEAVY, Budget, UploadedImage, fast_png, output_dir, round_sig, user_errors

__all__ = ["EXAMPLES", "RegisterTab", "build_register_tab", "register_pair", "steps_for_method"]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [
    (ROOT / "examples" / f"{name}_source.png", ROOT / "examples" / f"{name}_target.png", label)
    for name, label in (("camera", "camera"), ("coins", "coins"), ("astronaut_gamma", "astronaut, contrast changed"))
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
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def register_pair(
    source: str | None,
    target: str | None,
    method: str = DEFAULT_METHOD,
    model: str | None = None,
    refine_steps: float = DEFAULT_REFINE_STEPS,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way of asking for a progress bar)
):
    """Register ``source`` onto ``target`` and return every picture and score the Register tab shows.

    Returns, in order: warped source, checkerboard (before, after), |difference| strip (before | after),
    quiver plot, deformed grid, Jacobian map, scores table, summary, [flow.npy, warped.png, metrics.json];
    all at the registered resolution, within one time budget (:class:`webapp.common.Budget`).
    """
    budget = Budget()
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
    paths = {name: fast_png(out / f"{name}.png", image) for name, image in pictures.items()}
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
        [str(files["flow"]), str(files["warped"]), str(files["metrics"])],
    )


def steps_for_method(method: str):
    """The steps slider follows the method: its default steps per level, or greyed out for a method without steps."""
    steps = METHODS[method].default_steps
    return gr.Slider(interactive=False) if steps is None else gr.Slider(value=steps, interactive=True)


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
            run = gr.Button("Register", variant="primary", elem_id="register-btn")
            examples = gr.Examples(
                [[str(s), str(t)] for s, t, _ in EXAMPLES],
                [source, target],
                example_labels=[label for _, _, label in EXAMPLES],
                label="Examples (photos deformed by known fields): click one to register it",
                cache_examples=False,
            )
        with gr.Column(scale=3):
            warped = gr.Image(label="Warped source", format="png", elem_id="warped", interactive=False, height=300)
            summary = gr.Markdown(elem_id="summary")
            scores = gr.Dataframe(
                headers=["score", "before", "after"],
                datatype=["str", "number", "number"],
                label="Scores: source vs target (before) and warped vs target (after)",
                elem_id="scores",
                interactive=False,
            )
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

    outputs = [warped, checker, difference, quiver, grid, jacobian, scores, summary, files]
    inputs = [source, target, method, model, steps]
    run.click(register_pair, inputs, outputs, api_name="register", **HEAVY)
    examples.load_input_event.then(register_pair, inputs, outputs, api_visibility="private", **HEAVY)
    method.change(steps_for_method, method, steps, api_visibility="private", queue=False)
    return RegisterTab(source, target, model)
