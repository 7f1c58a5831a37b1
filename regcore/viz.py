"""Pictures of a registration: interactive plotly figures and small RGB/gray arrays.

Used by the Gradio app and the notebooks; nothing here computes a registration.

Conventions (the project's contract): images are ``(H, W)`` floats in [0, 1]; a field ``flow``
is ``(2, H, W)`` in pixels, channel 0 the row (y) displacement and channel 1 the column (x),
with ``warped[y, x] = source[y + flow[0, y, x], x + flow[1, y, x]]``. So an arrow drawn at pixel
``p`` along ``flow(p)`` points to where the warped image's pixel ``p`` was fetched from in the
source. Figures put pixel (0, 0) at the top left, as an image viewer does, one unit per pixel.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from .io import to_uint8
from .metrics import endpoint_error, jacobian_determinant, jacobian_summary

__all__ = [
    "checkerboard",
    "colorize",
    "difference_image",
    "field_comparison_figure",
    "gradient_norms_figure",
    "grid_figure",
    "image_strip",
    "images_figure",
    "jacobian_figure",
    "label_contours",
    "loss_curve_figure",
    "quiver_figure",
]

#: Background images of figures are downsampled to at most this side (they travel as JPEG in the JSON).
FIGURE_IMAGE_SIDE = 384
#: Heatmaps are subsampled to at most this side to keep the figure JSON small.
HEATMAP_SIDE = 128
ARROW_COLOR = "#ff7f0e"
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Interleave two ``(H, W)`` images in a ``tiles × tiles`` checkerboard: ``(H, W)``, ``a`` in the top-left tile.

    Where two registered images line up, edges continue smoothly across tile borders.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) images of one shape, got {a.shape} and {b.shape}")
    side = max(1, math.ceil(max(a.shape) / max(1, tiles)))
    rows, cols = np.indices(a.shape)
    return np.where((rows // side + cols // side) % 2 == 0, a, b)


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = "magma") -> np.ndarray:
    """Map an ``(H, W)`` array linearly from ``[vmin, vmax]`` through a matplotlib colormap: ``(H, W, 3)`` uint8.

    Values outside the range are clipped, so two maps made with the same range are comparable.
    """
    from matplotlib import colormaps

    scaled = np.clip((np.asarray(values, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](scaled)[..., :3] * 255 + 0.5).astype(np.uint8)


def difference_image(a: np.ndarray, b: np.ndarray, vmax: float = 0.5) -> np.ndarray:
    """``|a - b|`` of two ``(H, W)`` images in [0, 1], coloured on a fixed ``[0, vmax]`` scale: ``(H, W, 3)`` uint8.

    The fixed scale makes a before and an after difference directly comparable (black = equal).
    """
    return colorize(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)), 0.0, vmax)


def image_strip(images: Sequence[np.ndarray], gap: int = 4, zoom: int = 1) -> np.ndarray:
    """Images side by side with white gaps: ``(H, W)`` in [0, 1] or ``(H, W, 3)`` uint8, one height -> ``(H, ΣW + gaps, 3)`` uint8.

    ``zoom`` enlarges each pixel to ``zoom × zoom`` (nearest neighbour), for small images.
    """
    rgb = [np.repeat(to_uint8(im)[..., None], 3, axis=2) if np.asarray(im).ndim == 2 else np.asarray(im, np.uint8) for im in images]
    if len({im.shape[0] for im in rgb}) != 1:
        raise ValueError(f"images differ in height: {[im.shape for im in rgb]}")
    spacer = np.full((rgb[0].shape[0], gap, 3), 255, np.uint8)
    parts = [part for im in rgb for part in (im, spacer)][:-1]
    strip = np.concatenate(parts, axis=1)
    return strip.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else strip


def _image_uri(image: np.ndarray, max_side: int = FIGURE_IMAGE_SIDE) -> tuple[str, tuple[int, int]]:
    """``(H, W)`` in [0, 1] or ``(H, W, 3)`` uint8 -> (JPEG data URI, its ``(h, w)``), downsampled to ``max_side``.

    JPEG, not PNG: a figure's backdrop needs no exact pixels, and JPEG is much smaller and faster
    to encode, which keeps the figure JSON (sent on every request) light.
    """
    pil = Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image))
    if max(pil.size) > max_side:
        scale = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), (pil.height, pil.width)


def _image_trace(image: np.ndarray, opacity: float = 1.0) -> go.Image:
    """An image as a plotly trace whose pixel (r, c) is centred at (x=c, y=r), even when downsampled for display."""
    h, w = image.shape[:2]
    uri, (shown_h, shown_w) = _image_uri(image)
    # A downsampled backdrop's pixels are bigger in data units, so the image still covers [-0.5, size - 0.5].
    dx, dy = w / shown_w, h / shown_h
    return go.Image(source=uri, x0=-0.5 + dx / 2, dx=dx, y0=-0.5 + dy / 2, dy=dy, hoverinfo="skip", opacity=opacity)


def _frame(fig: go.Figure, shape: tuple[int, int], row: int | None = None, col: int | None = None) -> None:
    """Image-like axes for one (sub)plot: top-left origin, one unit per pixel, equal aspect, no grid."""
    h, w = shape
    where = {"row": row, "col": col} if row is not None else {}
    xname = fig.get_subplot(row, col).xaxis.plotly_name if row is not None else "xaxis"  # "xaxis", "xaxis2", ...
    fig.update_xaxes(range=[-0.5, w - 0.5], constrain="domain", showgrid=False, zeroline=False, **where)
    # scaleanchor keeps pixels square; the reversed range puts row 0 at the top.
    fig.update_yaxes(range=[h - 0.5, -0.5], scaleanchor="x" + xname[5:], constrain="domain", showgrid=False, zeroline=False, **where)


def _arrow_path(x: np.ndarray, y: np.ndarray, u: np.ndarray, v: np.ndarray, head: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """One polyline for many arrows from ``(x, y)`` to ``(x + u, y + v)``, with NaN gaps between pieces.

    (numpy arrays with NaN gaps, not lists with None: plotly validates lists element by element,
    which is much slower, and ships arrays as compact binary.)

    Each arrow is a shaft and a two-barbed head ``head`` times the shaft's length, barbs 20° off the shaft.
    """
    angle = np.arctan2(v, u)
    barb = head * np.hypot(u, v)
    tip_x, tip_y = x + u, y + v
    ends = []
    for turn in (np.pi - 0.35, np.pi + 0.35):  # ±20° from pointing back along the shaft
        ends.append((tip_x + barb * np.cos(angle + turn), tip_y + barb * np.sin(angle + turn)))
    gap = np.full_like(x, np.nan)
    xs = np.stack([x, tip_x, gap, ends[0][0], tip_x, ends[1][0], gap], axis=-1).ravel()
    ys = np.stack([y, tip_y, gap, ends[0][1], tip_y, ends[1][1], gap], axis=-1).ravel()
    return xs.astype(np.float32), ys.astype(np.float32)


def _cell_means(flow: np.ndarray, step: int) -> np.ndarray:
    """``(2, H, W)`` -> ``(2, ceil(H / step), ceil(W / step))``: the mean over each ``step × step`` cell."""
    h, w = flow.shape[1:]
    ph, pw = -h % step, -w % step
    padded = np.pad(flow, ((0, 0), (0, ph), (0, pw)), mode="constant", constant_values=np.nan)
    cells = padded.reshape(2, (h + ph) // step, step, (w + pw) // step, step)
    return np.nanmean(cells, axis=(2, 4))


def _quiver_traces(flow: np.ndarray, max_arrows: int, color: str = ARROW_COLOR, pool: bool = False) -> tuple[list, str]:
    """Arrow lines and hover markers for a subsampled ``(2, H, W)`` field; also a note on the arrow scale.

    ``pool``: each arrow shows the mean of its cell instead of the value at the cell's centre
    (for fields that vary from pixel to pixel, such as a gradient, which sampling would miss).
    """
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[1:]
    step = max(1, math.ceil(max(h, w) / max(1, max_arrows)))
    ys, xs = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    if pool:
        means = _cell_means(flow, step)[:, : ys.shape[0], : ys.shape[1]]
        dy, dx = means[0].ravel(), means[1].ravel()
    else:
        dy, dx = flow[0, ys, xs].ravel(), flow[1, ys, xs].ravel()
    ys, xs = ys.ravel().astype(np.float64), xs.ravel().astype(np.float64)
    length = np.hypot(dy, dx)
    longest = float(length.max()) if length.size else 0.0
    # Displacements are often a few pixels against a wider arrow spacing: lengthen the arrows so the
    # longest spans ~ one spacing, and say so. Larger fields are drawn at true length (tip = where
    # the pixel is fetched from).
    scale = 1.0 if longest == 0 or longest >= 0.9 * step else 0.9 * step / longest
    note = "arrows at true length" if scale == 1.0 else f"arrows drawn ×{scale:.3g}"
    px, py = _arrow_path(xs, ys, scale * dx.astype(np.float64), scale * dy.astype(np.float64))
    lines = go.Scatter(x=px, y=py, mode="lines", line={"color": color, "width": 1.5}, hoverinfo="skip", showlegend=False, name="field")
    markers = go.Scatter(
        x=xs,
        y=ys,
        mode="markers",
        marker={"size": 4, "color": color},
        customdata=np.stack([dy, dx, length], axis=-1).round(3),
        hovertemplate="pixel (y=%{y}, x=%{x})<br>dy = %{customdata[0]:.2f} px<br>dx = %{customdata[1]:.2f} px"
        "<br>|d| = %{customdata[2]:.2f} px<extra></extra>",
        showlegend=False,
        name="vectors",
    )
    return [lines, markers], note


def quiver_figure(
    image: np.ndarray | None, flow: np.ndarray, max_arrows: int = 24, title: str = "Displacement field", pool: bool = False
) -> go.Figure:
    """Interactive quiver plot of a ``(2, H, W)`` pixel field, subsampled to ``max_arrows`` per side.

    Args:
        image: ``(H, W)`` in [0, 1] drawn underneath (e.g. the target), or None.
        flow: ``(2, H, W)`` displacement in pixels (channel 0 rows, 1 columns).
        max_arrows: arrows along the longer side.
        pool: draw each arrow as the mean of the field over its cell, not the value at its base.

    Hovering an arrow's base (a dot) shows its pixel and its vector ``(dy, dx)`` in pixels. Arrows
    shorter than their spacing are lengthened so the longest spans about one spacing (the title
    says by how much); larger ones are drawn at true length.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected a field of shape (2, H, W), got {flow.shape}")
    fig = go.Figure()
    if image is not None:
        fig.add_trace(_image_trace(np.asarray(image), opacity=0.8))
    traces, note = _quiver_traces(flow, max_arrows, pool=pool)
    fig.add_traces(traces)
    _frame(fig, flow.shape[1:])
    fig.update_layout(title={"text": f"{title} ({note}; hover for values)", "font": {"size": 13}}, margin=_MARGIN, height=460)
    return fig


def grid_figure(image: np.ndarray | None, flow: np.ndarray, lines: int = 16, title: str = "Deformed grid") -> go.Figure:
    """The target's regular grid mapped by ``p -> p + flow(p)``: where each grid line samples the source.

    Args:
        image: ``(H, W)`` in [0, 1] drawn underneath (the source, whose coordinates the lines are in), or None.
        flow: ``(2, H, W)`` displacement in pixels.
        lines: grid lines along the longer side.

    Straight lines mean no deformation; lines that cross or fold back mean the field folds.
    """
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[1:]
    spacing = max(2, math.ceil(max(h, w) / max(1, lines)))
    along = max(1, spacing // 4)  # points per line segment: enough to show curvature, few enough to stay light
    cols = np.unique(np.r_[np.arange(0, w, along), w - 1])
    rows = np.unique(np.r_[np.arange(0, h, along), h - 1])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for r in sorted({*range(0, h, spacing), h - 1}):  # one polyline per grid row, NaN-separated
        xs += [cols + flow[1, r, cols], [np.nan]]
        ys += [r + flow[0, r, cols], [np.nan]]
    for c in sorted({*range(0, w, spacing), w - 1}):
        xs += [c + flow[1, rows, c], [np.nan]]
        ys += [rows + flow[0, rows, c], [np.nan]]
    fig = go.Figure()
    if image is not None:
        fig.add_trace(_image_trace(np.asarray(image), opacity=0.6))
    path = {"x": np.concatenate(xs).astype(np.float32), "y": np.concatenate(ys).astype(np.float32)}
    fig.add_trace(go.Scatter(**path, mode="lines", line={"color": ARROW_COLOR, "width": 1.2}, hoverinfo="skip", showlegend=False))
    _frame(fig, (h, w))
    text = f"{title}: the target's grid, drawn where it samples the source"
    fig.update_layout(title={"text": text, "font": {"size": 13}}, margin=_MARGIN, height=460)
    return fig


def _subsample(array: np.ndarray, max_side: int = HEATMAP_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(H, W)`` -> every k-th row and column (k so the longer side ≤ ``max_side``), with their indices."""
    step = max(1, math.ceil(max(array.shape) / max_side))
    rows, cols = np.arange(0, array.shape[0], step), np.arange(0, array.shape[1], step)
    return array[np.ix_(rows, cols)], rows, cols


#: J ≤ 0 (folding) black; 0 < J < 1 (compression) blue; 1 white; J > 1 (expansion) red; over [-1, 3].
JACOBIAN_COLORSCALE = [[0.0, "#000000"], [0.25, "#000000"], [0.2501, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]


def jacobian_figure(flow: np.ndarray | None, title: str = "Jacobian determinant", jacobian: np.ndarray | None = None) -> go.Figure:
    """Heatmap of the Jacobian determinant ``J`` of ``p -> p + flow(p)`` for a ``(2, H, W)`` pixel field.

    White is J = 1 (area kept), blue compression, red expansion, black J ≤ 0 (folding: the map is
    not invertible there). The title gives the folding percentage and the smallest J (both over
    all pixels; the map itself is subsampled to ``HEATMAP_SIDE`` for display). ``jacobian``: the
    ``(H, W)`` map if already computed (``RegistrationResult.jacobian``); ``flow`` is then not read.
    """
    jac = jacobian_determinant(flow) if jacobian is None else np.asarray(jacobian)
    shown, rows, cols = _subsample(jac)
    fig = go.Figure(
        go.Heatmap(
            z=shown.astype(np.float32),
            x=cols,
            y=rows,
            zmin=-1.0,
            zmax=3.0,
            colorscale=JACOBIAN_COLORSCALE,
            colorbar={"title": {"text": "J"}, "tickvals": [-1, 0, 1, 2, 3], "ticktext": ["≤0 folds", "0", "1", "2", "≥3"]},
            hovertemplate="pixel (y=%{y}, x=%{x})<br>J = %{z:.3f}<extra></extra>",
        )
    )
    _frame(fig, jac.shape)
    stats = jacobian_summary(jac)
    text = f"{title}<br>folding {stats['folding_percent']:.3f}% of pixels (J ≤ 0), min J = {stats['jacobian_min']:.3f}"
    fig.update_layout(title={"text": text, "font": {"size": 13}}, margin={**_MARGIN, "t": 60}, height=460)
    return fig


def field_comparison_figure(image: np.ndarray | None, true_flow: np.ndarray, pred_flow: np.ndarray, margin: int = 0) -> go.Figure:
    """True and predicted ``(2, H, W)`` pixel fields side by side, and their per-pixel endpoint error.

    The title of the error map gives the mean endpoint error (pixels ≥ ``margin`` from the border,
    :func:`regcore.metrics.endpoint_error`).
    """
    true_flow, pred_flow = np.asarray(true_flow, np.float32), np.asarray(pred_flow, np.float32)
    epe = endpoint_error(pred_flow, true_flow, margin)
    where = f" ({margin}-px border left out)" if margin else ""
    fig = make_subplots(1, 3, subplot_titles=["true field", "predicted field", f"endpoint error: mean {epe:.2f} px{where}"])
    for col, flow in ((1, true_flow), (2, pred_flow)):
        if image is not None:
            fig.add_trace(_image_trace(np.asarray(image), opacity=0.8), row=1, col=col)
        traces, _ = _quiver_traces(flow, 16)
        for trace in traces:
            fig.add_trace(trace, row=1, col=col)
    # The per-pixel error map; its mean is the figure's EPE.
    error, rows, cols = _subsample(np.hypot(*(pred_flow - true_flow)))
    vmax = max(1.0, float(np.hypot(*true_flow).max()) / 2)
    fig.add_trace(
        go.Heatmap(
            z=error.astype(np.float32),
            x=cols,
            y=rows,
            zmin=0,
            zmax=vmax,
            colorscale="Magma",
            colorbar={"title": {"text": "px"}, "len": 0.8},
            hovertemplate="pixel (y=%{y}, x=%{x})<br>error = %{z:.2f} px<extra></extra>",
        ),
        row=1,
        col=3,
    )
    for col in (1, 2, 3):
        _frame(fig, true_flow.shape[1:], row=1, col=col)
    fig.update_layout(margin={**_MARGIN, "t": 60}, height=380, showlegend=False)
    return fig


def images_figure(images: Mapping[str, np.ndarray], height: int = 300) -> go.Figure:
    """A row of ``(H, W)`` images in [0, 1] (or ``(H, W, 3)`` uint8), titled by their keys."""
    names = list(images)
    fig = make_subplots(1, len(names), subplot_titles=names, horizontal_spacing=0.02)
    for col, name in enumerate(names, start=1):
        image = np.asarray(images[name])
        fig.add_trace(_image_trace(image), row=1, col=col)
        _frame(fig, image.shape[:2], row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    fig.update_layout(margin={**_MARGIN, "t": 60}, height=height)
    return fig


def loss_curve_figure(
    steps: Sequence[int], losses: Sequence[float], title: str = "Training loss", extra: Mapping | None = None, window: int = 20
) -> go.Figure:
    """Line plot of a loss per step, its running mean over ``window`` steps (per-step losses are noisy),
    and optional extra curves ``{name: (steps, values)}`` on a second axis."""
    losses = np.asarray(losses, np.float64)
    running = np.convolve(losses, np.ones(window), "full")[: len(losses)] / np.minimum(np.arange(1, len(losses) + 1), window)
    fig = go.Figure(go.Scatter(x=list(steps), y=losses, mode="lines", name="loss", line={"width": 1}, opacity=0.4))
    fig.add_trace(go.Scatter(x=list(steps), y=running, mode="lines", name=f"loss, mean of {window} steps", line={"width": 2.5}))
    for name, (xs, ys) in (extra or {}).items():
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name, yaxis="y2"))
    fig.update_layout(title={"text": title, "font": {"size": 13}}, xaxis_title="step", yaxis_title="loss", height=340)
    fig.update_layout(margin={**_MARGIN, "t": 70}, legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    if extra:
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": ", ".join(extra), "showgrid": False})
    return fig


def gradient_norms_figure(norms: Mapping[str, float], title: str = "Gradient norm per layer") -> go.Figure:
    """Horizontal bars of the gradient norm of each parameter tensor (log scale), input side at the top."""
    names = list(norms)
    fig = go.Figure(go.Bar(x=[max(float(norms[n]), 1e-12) for n in names], y=names, orientation="h"))
    fig.update_layout(title={"text": title, "font": {"size": 13}}, margin=_MARGIN, height=max(260, 24 * len(names) + 90))
    fig.update_xaxes(type="log", title="‖∂loss/∂weights‖")
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=names, ticktext=names, tickfont={"size": 10})
    return fig


#: Contour colours of :func:`label_contours` (Okabe–Ito orange and sky blue, told apart with colour-blindness).
TARGET_CONTOUR = (230, 159, 0)
MOVED_CONTOUR = (86, 180, 233)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels of a nonzero label with a 4-neighbour of another label."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels != 0)


def label_contours(image: np.ndarray, moved_labels: np.ndarray, target_labels: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` image in [0, 1] with the outlines of two label maps drawn over it: ``(H, W, 3)`` uint8.

    The target's outlines in :data:`TARGET_CONTOUR`, ``moved_labels``' (the source's labels, warped
    or not) in :data:`MOVED_CONTOUR`, and white where they coincide: the more white, the better the
    labels agree.
    """
    rgb = np.repeat(to_uint8(image)[..., None], 3, axis=2)
    moved, target = _boundaries(moved_labels), _boundaries(target_labels)
    rgb[target] = TARGET_CONTOUR
    rgb[moved] = MOVED_CONTOUR
    rgb[moved & target] = 255
    return rgb
