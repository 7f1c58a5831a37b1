"""The Compare tab: the Register tab's pair by every method of :data:`webapp.compute.COMPARE_METHODS`, side by side.

:func:`compare` turns :func:`webapp.compute.compare_methods` into a gallery and a table;
:func:`build_compare_tab` lays out the components and wires the event.
"""

from __future__ import annotations

import gradio as gr

from regcore.pipeline import METHODS

from . import compute
from .common import HEAVY, Budget, picture_files, round_sig, user_errors

__all__ = ["build_compare_tab", "compare"]


def compare(source: str | None, target: str | None, model: str | None = None, progress: gr.Progress = gr.Progress()):  # noqa: B008
    """The Register tab's pair by every method: warped images, and a table of scores and times (within one time budget)."""
    budget = Budget()
    if source is None or target is None:
        raise gr.Error("Upload a source and a target image on the Register tab first (or click an example there).")
    with user_errors():
        results = compute.compare_methods(
            source, target, model or None, progress=lambda m: progress(None, desc=f"running {m}"), timeout_s=budget.remaining()
        )
    files = picture_files({"target": results[0].target} | {f"warped_{i}": r.warped for i, r in enumerate(results)})
    gallery = [(files["target"], "target")] + [(files[f"warped_{i}"], f"{r.method}: {r.time_s:.2f} s") for i, r in enumerate(results)]
    keys = ("mse", "ncc", "local_ncc", "folding_percent", "jacobian_min")
    rows = [[r.method, round_sig(r.time_s), *(round_sig(r.after[k]) for k in keys)] for r in results]
    before = results[0].before  # every method started from the same pair
    rows.insert(0, ["(before: source vs target)", None, *(round_sig(before.get(k)) for k in keys)])
    notes = sorted({note for r in results for note in r.notes})
    budget.check("while scoring the methods")
    return gallery, rows, "\n".join(f"- {n}" for n in notes)


def build_compare_tab(source: gr.Image, target: gr.Image, model: gr.Dropdown) -> None:
    """The Compare tab's components and event (the pair and model are the Register tab's); API endpoint ``/compare``."""
    names = ", ".join(f"{METHODS[m].label} (`{m}`)" for m in compute.COMPARE_METHODS)
    gr.Markdown(
        f"The pair on the **Register** tab registered by each method: {names}. The network's methods need a checkpoint; "
        f"the last ones are classical optical flows. Same pixels (at most {compute.COMPARE_SIDE} px a side), same scores, "
        "all through `regcore.register(method=...)`."
    )
    button = gr.Button("Compare methods", variant="primary", elem_id="compare-btn")
    gallery = gr.Gallery(label="Target and each method's warped source", format="png", columns=len(compute.COMPARE_METHODS) + 1, height=300)
    table = gr.Dataframe(
        headers=["method", "time (s)", "MSE", "global NCC", "local NCC", "folding %", "min Jacobian"],
        datatype=["str", "number", "number", "number", "number", "number", "number"],
        interactive=False,
        elem_id="compare-table",
    )
    notes = gr.Markdown()
    button.click(compare, [source, target, model], [gallery, table, notes], api_name="compare", **HEAVY)
