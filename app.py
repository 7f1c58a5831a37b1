"""Gradio app: register two images, see the field and the scores, and learn how the method works.

Thin UI wiring: registration is :func:`regcore.register`, the Learn/Compare computations are in
:mod:`regcore.demo`, the pictures in :mod:`regcore.viz`.

Run ``python app.py`` (http://127.0.0.1:7860); ``--host`` / ``--port`` or the environment
variables ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` change where it listens. Importing this
module builds ``demo`` without launching it (tests and Hugging Face Spaces use that).
API: ``/register`` takes (source, target, method, model, refine_steps) and returns the warped
image first; see the "Use via API" link at the bottom of the page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Offline by default: no telemetry thread, no Hub look-ups that would stall without a network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning. On a small, shared CPU (2 cores running other work, or
# two requests at once) spinning threads starve each other: measured 5.1 s vs 0.34 s for one 256² "net"
# registration under load. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr
import numpy as np
from PIL import Image

import regcore
from regcore import demo as lessons
from regcore import viz
from regcore.api import DEFAULT_OPTIMIZE_STEPS, DEFAULT_REFINE_STEPS
from regcore.io import MAX_PIXELS, to_uint8

ROOT = Path(__file__).resolve().parent
EXAMPLES = [
    (ROOT / "examples" / f"{name}_source.png", ROOT / "examples" / f"{name}_target.png", label)
    for name, label in (("camera", "camera"), ("coins", "coins"), ("astronaut_gamma", "astronaut, contrast changed"))
]
MAX_FILE_SIZE = "10mb"
#: A registration request that runs longer than this is stopped with a message (frees the worker).
REQUEST_TIMEOUT_S = 120.0
METHODS = [("network", "net"), ("network + refinement", "net+refine"), ("optimisation only", "optimize")]
LEARN_SIZE = 128
LEARN_PHOTOS = ("camera", "astronaut", "coins", "moon", "brick", "text", "chelsea", "coffee")
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "regcore-app"
#: Result folders older than this are deleted when a new one is made.
OUTPUT_MAX_AGE_S = 3600

HEADER = """# regcore: 2-D deformable image registration
Give a **source** (the image to move) and a **target**; a UNet predicts a displacement field that
warps the source onto the target. Images: PNG, JPEG, TIFF, BMP, WebP; colour or gray (converted to
gray); up to {mb} and {mp} megapixels; registered at up to 512 px on the longer side.
The **Learn** tab shows how it works, **Compare** pits it against classical methods."""


class UploadedImage(gr.Image):
    """An image input that hands regcore the uploaded file itself.

    ``gr.Image`` decodes uploads on its own first, so a corrupt, empty or oversized file failed there
    with Gradio's generic "Could not preprocess input" message; regcore's loader gives the one-line
    reason instead (and applies its pixel limit before decoding).
    """

    def preprocess(self, payload: gr.data_classes.FileData | None) -> str | None:
        return None if payload is None else str(payload.path)

    def get_block_name(self) -> str:
        return "image"  # the browser draws it as the ordinary image input (it knows no "uploadedimage")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn regcore's one-line input errors into a message in the UI (and an AppError for API clients)."""
    try:
        yield
    except regcore.RegcoreError as err:
        raise gr.Error(str(err)) from None


_last_cleanup = 0.0


def _output_dir() -> Path:
    """A fresh folder for one result's downloads; folders older than an hour are removed (checked at most once a minute)."""
    global _last_cleanup
    OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
    now = time.time()
    if now - _last_cleanup > 60:
        _last_cleanup = now
        for old in OUTPUT_ROOT.iterdir():
            if old.stat().st_mtime < now - OUTPUT_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=OUTPUT_ROOT))


def _fast_png(path: Path, image: np.ndarray) -> str:
    """Write ``(H, W)`` in [0, 1] or ``(H, W, 3)`` uint8 as a PNG with fast compression; returns the path."""
    Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image)).save(path, compress_level=1)
    return str(path)


def _default_method() -> str:
    return "net+refine" if regcore.available_models() else "optimize"


def _round(value: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits: what a person reads (the full values are in metrics.json)."""
    return None if value is None else float(f"{value:.{digits}g}")


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
    return [[name, _round(before), _round(after)] for name, before, after in rows]


def _summary(result: regcore.RegistrationResult) -> str:
    b, a = result.before, result.after
    model = f" with model `{result.model}`" if result.model else ""
    lines = [
        f"**{result.method}**{model} in **{result.time_s:.2f} s** · local NCC {b['local_ncc']:.3f} → **{a['local_ncc']:.3f}**, "
        f"MSE {b['mse']:.4f} → **{a['mse']:.4f}**, folding {a['folding_percent']:.3f}%"
    ]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


def register_pair(
    source: str | None,
    target: str | None,
    method: str = "net+refine",
    model: str | None = None,
    refine_steps: float = DEFAULT_REFINE_STEPS,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way of asking for a progress bar)
):
    """Register ``source`` onto ``target`` and return every picture and score the Register tab shows.

    Returns, in order: warped source, checkerboard (before, after), |difference| strip (before | after),
    quiver plot, deformed grid, Jacobian map, scores table, summary, [flow.npy, warped.png, metrics.json].
    """
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
            timeout_s=REQUEST_TIMEOUT_S,
        )
    src, tgt, warped, flow = result.source, result.target, result.warped, result.flow
    out = _output_dir()
    files = result.save(out)
    # Pictures go out as PNG files written here with fast compression: handing gradio arrays would
    # re-encode each at PNG's default level, several times slower (it matters for latency).
    pictures = {
        "checker_before": viz.checkerboard(src, tgt),
        "checker_after": viz.checkerboard(warped, tgt),
        # One picture, not a second slider: each returned file is one more download for API clients.
        "difference": viz.image_strip([viz.difference_image(src, tgt), viz.difference_image(warped, tgt)]),
    }
    paths = {name: _fast_png(out / f"{name}.png", image) for name, image in pictures.items()}
    return (
        str(files["warped"]),
        (paths["checker_before"], paths["checker_after"]),
        paths["difference"],
        viz.quiver_figure(tgt, flow),
        viz.grid_figure(src, flow),
        viz.jacobian_figure(flow),
        _scores_table(result),
        _summary(result),
        [str(files["flow"]), str(files["warped"]), str(files["metrics"])],
    )


def steps_for_method(method: str):
    """The steps slider follows the method: per-level steps for optimisation, none for the network alone."""
    return gr.Slider(value=DEFAULT_OPTIMIZE_STEPS if method == "optimize" else DEFAULT_REFINE_STEPS, interactive=method != "net")


def learn_deform(photo: str, magnitude: float, smoothness: float, seed: float, model: str | None):
    """Deform a photograph by a known random field, let the network recover it, compare the fields."""
    with user_errors():
        source, target, true_flow = lessons.deform_photo(photo, LEARN_SIZE, magnitude, smoothness, int(seed))
        name = lessons.resolve_model(model)
        result = regcore.register(source, target, method="net" if name else "optimize", model=name)
    margin = 8
    epe = regcore.metrics.endpoint_error(result.flow, true_flow, margin)
    identity = regcore.metrics.endpoint_error(np.zeros_like(true_flow), true_flow, margin)
    who = f"the network (`{name}`)" if name else "optimisation (no trained checkpoint found)"
    text = (
        f"Recovered by {who} in {result.time_s:.2f} s. **Endpoint error {epe:.2f} px** "
        f"(mean distance between the true and the predicted displacement, {margin}-px border left out); "
        f"doing nothing would score {identity:.2f} px. Largest true displacement: {float(np.hypot(*true_flow).max()):.1f} px."
    )
    return source, target, viz.field_comparison_figure(target, true_flow, result.flow, margin), text, (source, target)


def learn_steps(pair: tuple | None, model: str | None):
    """The four steps of the method on the Learn pair, as pictures and numbers."""
    if pair is None:
        raise gr.Error("Make a pair first (step 0 above).")
    with user_errors():
        steps = lessons.walkthrough(pair[0], pair[1], lessons.resolve_model(model))
    source, target = pair
    ncc_range = {"vmin": -1.0, "vmax": 1.0, "cmap": "RdYlGn"}
    who = f"`{steps.model}`" if steps.model else "an untrained network (no checkpoint found, so the field is ~0)"
    loss_text = (
        f"Network: {who}. Similarity term −mean local NCC: before {-float(steps.ncc_before.mean()):.4f}, after "
        f"**{steps.similarity:.4f}**; smoothness term {steps.smoothness:.4f}; **loss = {steps.loss:.4f}**."
    )
    return (
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


def learn_train(steps: float, recipe: str, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """Train a tiny UNet live, streaming the loss curve and a sample registration every 10 steps."""
    with user_errors():
        for update in lessons.train_live(steps=int(steps), recipe=recipe):
            progress((update.step, update.total), desc="training")
            curve = viz.loss_curve_figure(
                range(1, update.step + 1), update.losses, extra={"EPE on the photo (px)": (update.epe_steps, update.epe)}
            )
            difference = viz.difference_image(update.warped, update.target)
            sample = viz.image_strip([update.source, update.target, update.warped, difference], zoom=4)
            rate = update.step / max(update.seconds, 1e-9)
            status = (
                f"step {update.step}/{update.total} · loss {update.losses[-1]:.4f} · endpoint error on the photo "
                f"**{update.epe[-1]:.2f} px** (first check {update.epe[0]:.2f} px) · {rate:.1f} steps/s"
            )
            yield curve, sample, status


def compare(source: str | None, target: str | None, model: str | None = None, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """The Register tab's pair by every method: warped images, and a table of scores and times."""
    if source is None or target is None:
        raise gr.Error("Upload a source and a target image on the Register tab first (or click an example there).")
    with user_errors():
        results = lessons.compare_methods(source, target, model or None, progress=lambda m: progress(None, desc=f"running {m}"))
    gallery = [(results[0].target, "target")] + [(r.warped, f"{r.method}: {r.time_s:.2f} s") for r in results]
    keys = ("mse", "ncc", "local_ncc", "folding_percent", "jacobian_min")
    rows = [[r.method, _round(r.time_s), *(_round(r.after[k]) for k in keys)] for r in results]
    before = results[0].before  # every method started from the same pair
    rows.insert(0, ["(before: source vs target)", None, *(_round(before.get(k)) for k in keys)])
    notes = sorted({note for r in results for note in r.notes})
    return gallery, rows, "\n".join(f"- {n}" for n in notes)


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


def build_demo() -> gr.Blocks:
    """The whole app (not launched)."""
    models = list(regcore.available_models())
    model_info = "checkpoints found in checkpoints/" if models else "no checkpoint found: only optimisation works"
    with gr.Blocks(title="regcore: deformable image registration", delete_cache=(OUTPUT_MAX_AGE_S, OUTPUT_MAX_AGE_S)) as app:
        gr.Markdown(HEADER.format(mb=MAX_FILE_SIZE.upper(), mp=MAX_PIXELS // 1_000_000))
        with gr.Tabs():
            with gr.Tab("Register", id="register"):
                with gr.Row():
                    with gr.Column(scale=2):
                        with gr.Row():
                            source = UploadedImage(label="Source (moving)", type="filepath", elem_id="source", height=260)
                            target = UploadedImage(label="Target (fixed)", type="filepath", elem_id="target", height=260)
                        with gr.Row():
                            method = gr.Dropdown(METHODS, value=_default_method(), label="Method", elem_id="method")
                            model = gr.Dropdown(
                                models, value=models[0] if models else None, label="Model", info=model_info, elem_id="model"
                            )
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
                    label="Downloads: flow.npy (2, H, W) pixels, warped.png, metrics.json", file_count="multiple", elem_id="files"
                )
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(
                    "### 0 · Deform an image yourself\nA photograph is warped by a random smooth field you control; "
                    "the network has to find that field from the two images alone."
                )
                with gr.Row():
                    photo = gr.Dropdown(list(LEARN_PHOTOS), value="camera", label="Photograph")
                    magnitude = gr.Slider(0, 16, value=6, step=0.5, label="Magnitude (largest displacement, px)")
                    smoothness = gr.Slider(1, 10, value=4, step=1, label="Smoothness (1 wiggly … 10 one broad bend)")
                    seed = gr.Slider(0, 99, value=0, step=1, label="Seed")
                deform_btn = gr.Button("Deform and recover", variant="primary", elem_id="deform-btn")
                with gr.Row():
                    learn_source = gr.Image(label="Source", format="png", interactive=False, height=220)
                    learn_target = gr.Image(label="Target = source deformed by the true field", format="png", interactive=False, height=220)
                field_cmp = gr.Plot(label="True vs predicted field", elem_id="field-compare")
                epe_text = gr.Markdown()
                pair = gr.State(None)
                gr.Markdown("### The four steps, on this pair")
                steps_btn = gr.Button("Walk through the steps", elem_id="steps-btn")
                step_plots = []
                for number in (1, 2, 3, 4):
                    with gr.Row():
                        with gr.Column(scale=1):
                            gr.Markdown(STEP_TEXT[number])
                            if number == 3:
                                loss_md = gr.Markdown()
                        with gr.Column(scale=3):
                            step_plots.append(gr.Plot(show_label=False, elem_id=f"step-{number}"))
                            if number == 4:
                                grad_bars = gr.Plot(show_label=False, elem_id="grad-bars")
                gr.Markdown(
                    "### Train a tiny UNet, live\nA 3-level UNet (~16k weights) learns from generated 48×48 pairs (random "
                    "shapes and textures, random smooth fields) with the same losses as `train.py`. The sample is a photograph it "
                    "never sees. A few hundred steps only make a start (the loss falls, the photo's error begins to drop); the "
                    "shipped model trained for thousands of steps."
                )
                with gr.Row():
                    train_steps = gr.Slider(50, 600, value=300, step=50, label="Training steps")
                    recipe = gr.Radio(
                        [("unsupervised (local NCC + smoothness)", "unsup"), ("hybrid (+ error to the known field)", "hybrid")],
                        value="hybrid",
                        label="Loss",
                    )
                with gr.Row():
                    train_btn = gr.Button("Train", variant="primary", elem_id="train-btn")
                    stop_btn = gr.Button("Stop")
                train_status = gr.Markdown()
                with gr.Row():
                    curve = gr.Plot(label="Loss", elem_id="loss-curve")
                    sample = gr.Image(
                        label="Sample: source | target | warped by the tiny net | |warped − target|",
                        format="png",
                        interactive=False,
                        elem_id="train-sample",
                    )
            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "The pair on the **Register** tab, registered by the network, the network plus refinement, the "
                    "project's per-pair optimisation (classical iterative registration) and scikit-image's TV-L1 optical "
                    "flow. Same pixels (at most 256 px a side), same scores."
                )
                compare_btn = gr.Button("Compare methods", variant="primary", elem_id="compare-btn")
                gallery = gr.Gallery(label="Target and each method's warped source", format="png", columns=5, height=300)
                compare_table = gr.Dataframe(
                    headers=["method", "time (s)", "MSE", "global NCC", "local NCC", "folding %", "min Jacobian"],
                    datatype=["str", "number", "number", "number", "number", "number", "number"],
                    interactive=False,
                    elem_id="compare-table",
                )
                compare_notes = gr.Markdown()

        outputs = [warped, checker, difference, quiver, grid, jacobian, scores, summary, files]
        inputs = [source, target, method, model, steps]
        run.click(register_pair, inputs, outputs, api_name="register", concurrency_limit=2, concurrency_id="register")
        examples.load_input_event.then(register_pair, inputs, outputs, api_visibility="private", concurrency_id="register")
        method.change(steps_for_method, method, steps, api_visibility="private", queue=False)
        step_outputs = [*step_plots[:3], loss_md, step_plots[3], grad_bars]  # the order learn_steps returns them in
        deform_event = gr.on(
            [deform_btn.click, app.load, magnitude.release, smoothness.release, seed.release, photo.input],
            learn_deform,
            [photo, magnitude, smoothness, seed, model],
            [learn_source, learn_target, field_cmp, epe_text, pair],
            api_name="deform",
            trigger_mode="always_last",
        )
        deform_event.then(lambda: [None] * 6, None, step_outputs, api_visibility="private", queue=False)
        steps_btn.click(learn_steps, [pair, model], step_outputs, api_name="walkthrough")
        train_event = train_btn.click(
            learn_train, [train_steps, recipe], [curve, sample, train_status], api_name="train", concurrency_limit=1, concurrency_id="train"
        )
        stop_btn.click(None, None, None, cancels=[train_event], api_visibility="private")
        compare_btn.click(
            compare,
            [source, target, model],
            [gallery, compare_table, compare_notes],
            api_name="compare",
            concurrency_limit=1,
            concurrency_id="heavy",
        )
    # A bounded queue: a few requests at a time on a small CPU, and a clear "queue full" beyond that.
    app.queue(default_concurrency_limit=2, max_size=32)
    return app


demo = build_demo()


def launch(host: str | None = None, port: int | None = None, **kwargs):
    """Launch ``demo``: host/port default to GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, else 127.0.0.1:7860.

    ``kwargs`` go to :meth:`gradio.Blocks.launch` (tests pass ``prevent_thread_lock=True``).
    """
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    options = {"max_file_size": MAX_FILE_SIZE, "theme": gr.themes.Soft(), "footer_links": ["api", "gradio", "settings"], "show_error": True}
    return demo.launch(server_name=host, server_port=port, **{**options, **kwargs})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="regcore's Gradio app")
    parser.add_argument("--host", default=None, help="interface to listen on (default $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    launch(args.host, args.port)


if __name__ == "__main__":
    main()
