"""The Learn tab: deform a photograph by a known field, walk through the method's four steps, train a tiny UNet live.

The handlers (:func:`learn_deform`, :func:`learn_steps`, :func:`learn_train`) turn the
computations of :mod:`webapp.compute` into pictures; :func:`build_learn_tab` lays out the
components and wires the events.
"""

from __future__ import annotations

import functools
import threading

import gradio as gr
import numpy as np

import regcore
from regcore import viz

from . import common, compute
from .common import HEAVY, Budget, output_dir, picture_files, user_errors

__all__ = [
    "LEARN_PHOTOS",
    "LEARN_SIZE",
    "LEARN_START",
    "STEP_TEXT",
    "build_learn_tab",
    "first_pair",
    "learn_deform",
    "learn_steps",
    "learn_train",
]

LEARN_SIZE = 128
LEARN_PHOTOS = ("camera", "astronaut", "coins", "moon", "brick", "text", "chelsea", "coffee")
#: The deformation the tab starts with, shown on every page load: (photo, magnitude px, smoothness, seed).
LEARN_START = ("camera", 6.0, 4.0, 0.0)

STEP_TEXT = {
    1: "**1 · Network → field.** The UNet sees the source and the target stacked as two channels and outputs, for every "
    "pixel, a displacement (dy, dx) in pixels. Hover the arrows to read them.",
    2: "**2 · Warp.** Each pixel of the warped image is fetched from the source at its position plus its displacement, "
    "with bilinear interpolation: `warped[y, x] = source[y + dy, x + dx]`. This is differentiable, so errors can flow back.",
    3: "**3 · Similarity loss.** Local normalised cross-correlation compares 9×9 windows of the warped source and the "
    "target (green = similar, red = anti-correlated). The loss is minus its mean, plus a smoothness penalty on the field.",
    4: "**4 · Backprop.** The gradient of the loss says how each displacement should change to lower the loss (arrows) "
    "and, through the chain rule, how each layer's weights should change (bars). Training repeats this on many pairs.",
}


def learn_deform(photo: str, magnitude: float, smoothness: float, seed: float, model: str | None):
    """Deform a photograph by a known random field, let the network recover it, compare the fields."""
    source, target, figure, text, pair = _deform(photo, magnitude, smoothness, seed, model)
    files = picture_files({"source": source, "target": target})
    return files["source"], files["target"], figure, text, pair


def _deform(photo: str, magnitude: float, smoothness: float, seed: float, model: str | None):
    """:func:`learn_deform`'s outputs with the images as arrays."""
    budget = Budget()
    with user_errors():
        source, target, true_flow = compute.deform_photo(photo, LEARN_SIZE, magnitude, smoothness, int(seed))
        name = compute.resolve_model(model)
        result = regcore.register(source, target, method="net" if name else "optimize", model=name, timeout_s=budget.remaining())
    margin = 8
    epe = regcore.metrics.endpoint_error(result.flow, true_flow, margin)
    identity = regcore.metrics.endpoint_error(np.zeros_like(true_flow), true_flow, margin)
    who = f"the network (`{name}`)" if name else "optimisation (no trained checkpoint found)"
    text = (
        f"Recovered by {who} in {result.time_s:.2f} s. **Endpoint error {epe:.2f} px** "
        f"(mean distance between the true and the predicted displacement, {margin}-px border left out); "
        f"doing nothing would score {identity:.2f} px. Largest true displacement: {float(np.hypot(*true_flow).max()):.1f} px."
    )
    figure = viz.field_comparison_figure(target, true_flow, result.flow, margin)
    budget.check("while drawing the fields")
    return source, target, figure, text, (source, target)


_first_pairs_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _first_pair_cached(photo: str, magnitude: float, smoothness: float, seed: float, model: str | None):
    return _deform(photo, magnitude, smoothness, seed, model)


def first_pair(model: str | None):
    """What :func:`learn_deform` shows for :data:`LEARN_START`: computed once per model and then kept, so
    that loading the page (which shows it) costs no worker and no CPU. ``app.py`` computes it for the
    default model before serving, which also loads that model (the first request then pays neither)."""
    with _first_pairs_lock:
        return _first_pair_cached(*LEARN_START, model)


def learn_steps(pair: tuple | None, model: str | None):
    """The four steps of the method on the Learn pair, as pictures and numbers."""
    budget = Budget()
    if pair is None:
        raise gr.Error("Make a pair first (step 0 above).")
    with user_errors():
        steps = compute.walkthrough(pair[0], pair[1], compute.resolve_model(model))
    budget.check("after the network's forward and backward pass")
    source, target = pair
    ncc_range = {"vmin": -1.0, "vmax": 1.0, "cmap": "RdYlGn"}
    who = f"`{steps.model}`" if steps.model else "an untrained network (no checkpoint found, so the field is ~0)"
    loss_text = (
        f"Network: {who}. Similarity term −mean local NCC: before {-float(steps.ncc_before.mean()):.4f}, after "
        f"**{steps.similarity:.4f}**; smoothness term {steps.smoothness:.4f}; **loss = {steps.loss:.4f}**."
    )
    figures = (
        viz.quiver_figure(target, steps.flow, title="Step 1: the network's field"),
        viz.images_figure({"source": source, "warped source": steps.warped, "target": target}),
        viz.images_figure(
            {"local NCC before": viz.colorize(steps.ncc_before, **ncc_range), "local NCC after": viz.colorize(steps.ncc_after, **ncc_range)}
        ),
        loss_text,
        viz.quiver_figure(
            target, -steps.flow_grad, title="Step 4: −∂loss/∂field (mean per arrow): where a gradient step moves the field", pool=True
        ),
        viz.gradient_norms_figure(steps.layer_grads),
    )
    budget.check("while drawing the steps")
    return figures


def learn_train(steps: float, recipe: str, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """Train a tiny UNet live, streaming the loss curve and a sample registration every 10 steps.

    Training stops, and the status says so, once :data:`webapp.common.TRAIN_TIMEOUT_S` has passed.
    """
    budget = Budget(common.TRAIN_TIMEOUT_S)
    out = output_dir()
    with user_errors():
        for update in compute.train_live(steps=int(steps), recipe=recipe, should_stop=budget.expired):
            progress((update.step, update.total), desc="training")
            curve = viz.loss_curve_figure(
                range(1, update.step + 1), update.losses, extra={"EPE on the photo (px)": (update.epe_steps, update.epe)}
            )
            difference = viz.difference_image(update.warped, update.target)
            strip = viz.image_strip([update.source, update.target, update.warped, difference], zoom=4)
            sample = picture_files({f"sample_{update.step}": strip}, out)[f"sample_{update.step}"]
            rate = update.step / max(update.seconds, 1e-9)
            status = (
                f"step {update.step}/{update.total} · loss {update.losses[-1]:.4f} · endpoint error on the photo "
                f"**{update.epe[-1]:.2f} px** (first check {update.epe[0]:.2f} px) · {rate:.1f} steps/s"
            )
            if update.step < update.total and budget.expired():
                status += f" · **stopped: live training is limited to {budget.seconds:g} s**"
            yield curve, sample, status


def _deform_section():
    """Step 0's controls and outputs: (inputs without the model, outputs, the events that run it)."""
    gr.Markdown(
        "### 0 · Deform an image yourself\nA photograph is warped by a random smooth field you control; "
        "the network has to find that field from the two images alone."
    )
    with gr.Row():
        start_photo, start_magnitude, start_smoothness, start_seed = LEARN_START
        photo = gr.Dropdown(list(LEARN_PHOTOS), value=start_photo, label="Photograph")
        magnitude = gr.Slider(0, 16, value=start_magnitude, step=0.5, label="Magnitude (largest displacement, px)")
        smoothness = gr.Slider(1, 10, value=start_smoothness, step=1, label="Smoothness (1 wiggly … 10 one broad bend)")
        seed = gr.Slider(0, 99, value=start_seed, step=1, label="Seed")
    button = gr.Button("Deform and recover", variant="primary", elem_id="deform-btn")
    with gr.Row():
        source = gr.Image(label="Source", format="png", interactive=False, height=220)
        target = gr.Image(label="Target = source deformed by the true field", format="png", interactive=False, height=220)
    comparison = gr.Plot(label="True vs predicted field", elem_id="field-compare")
    epe_text = gr.Markdown()
    triggers = [button.click, magnitude.release, smoothness.release, seed.release, photo.input]
    return [photo, magnitude, smoothness, seed], [source, target, comparison, epe_text], triggers


def _steps_section() -> tuple[gr.Button, list]:
    """The four steps' explanations and plots: (the button, the outputs in the order :func:`learn_steps` returns them)."""
    gr.Markdown("### The four steps, on this pair")
    button = gr.Button("Walk through the steps", elem_id="steps-btn")
    plots, loss_md, bars = [], None, None
    for number in (1, 2, 3, 4):
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown(STEP_TEXT[number])
                if number == 3:
                    loss_md = gr.Markdown()
            with gr.Column(scale=3):
                plots.append(gr.Plot(show_label=False, elem_id=f"step-{number}"))
                if number == 4:
                    bars = gr.Plot(show_label=False, elem_id="grad-bars")
    return button, [*plots[:3], loss_md, plots[3], bars]


def _train_section():
    """The live training's controls and outputs: (train button, stop button, inputs, outputs)."""
    gr.Markdown(
        "### Train a tiny UNet, live\nA 3-level UNet (~16k weights) learns from generated 48×48 pairs (random "
        "shapes and textures, random smooth fields) with the same losses as `train.py`. The sample is a photograph it "
        "never sees. A few hundred steps only make a start (the loss falls, the photo's error begins to drop); the "
        "shipped model trained for thousands of steps."
    )
    with gr.Row():
        steps = gr.Slider(50, 600, value=300, step=50, label="Training steps")
        recipe = gr.Radio(
            [("unsupervised (local NCC + smoothness)", "unsup"), ("hybrid (+ error to the known field)", "hybrid")],
            value="hybrid",
            label="Loss",
        )
    with gr.Row():
        train, stop = gr.Button("Train", variant="primary", elem_id="train-btn"), gr.Button("Stop")
    status = gr.Markdown()
    with gr.Row():
        curve = gr.Plot(label="Loss", elem_id="loss-curve")
        sample = gr.Image(
            label="Sample: source | target | warped by the tiny net | |warped − target|",
            format="png",
            interactive=False,
            elem_id="train-sample",
        )
    return train, stop, [steps, recipe], [curve, sample, status]


def build_learn_tab(app: gr.Blocks, model: gr.Dropdown) -> None:
    """The Learn tab's components and events (inside ``app``); API endpoints ``/deform``, ``/walkthrough``, ``/train``.

    ``model`` is the Register tab's model choice; the pair is also made when the page loads.
    """
    deform_inputs, deform_outputs, triggers = _deform_section()
    pair = gr.State(None)
    steps_btn, step_outputs = _steps_section()
    train_btn, stop_btn, train_inputs, train_outputs = _train_section()

    deform_event = gr.on(
        triggers, learn_deform, [*deform_inputs, model], [*deform_outputs, pair], api_name="deform", trigger_mode="always_last", **HEAVY
    )
    # Every page load shows the starting pair: computed once and kept (first_pair), it needs no
    # worker, so loading the page never waits for, nor delays, the heavy requests in the queue.
    load_event = app.load(first_pair, model, [*deform_outputs, pair], api_visibility="private", queue=False)
    for event in (deform_event, load_event):
        event.then(lambda: [None] * len(step_outputs), None, step_outputs, api_visibility="private", queue=False)
    steps_btn.click(learn_steps, [pair, model], step_outputs, api_name="walkthrough", **HEAVY)
    train_event = train_btn.click(learn_train, train_inputs, train_outputs, api_name="train", **HEAVY)
    stop_btn.click(None, None, None, cancels=[train_event], api_visibility="private")
