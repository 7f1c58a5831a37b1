"""Regenerate the example pairs shipped with the app: ``python examples/make_examples.py`` (with regcore installed,
e.g. ``pip install -e .``).

Photographs: each pair is a scikit-image sample photograph (``source``) and the same photograph
deformed by a known smooth random field from :func:`regcore.data.photo_pairs` (``target``),
256×256 gray PNG. The ``*_gamma`` pair also changes the target's contrast (gamma 0.5 or 2), which
local NCC ignores and MSE does not.

Medical-like phantom with label maps (NIfTI): the Shepp–Logan head phantom (a public-domain
mathematical phantom, as scikit-image ships it) deformed by a known smooth random field from
:func:`regcore.data.random_fields`, each image with its own smooth bias field, gamma and noise
(:func:`regcore.data.intensity_augment`, as MR images vary), stored as int16 like scanner data:

- ``phantom_{source,target}.nii.gz``: 2-D, 256×256, 0.9 mm pixels;
- ``phantom_{source,target}_labels.nii.gz``: their label maps, which move with the image (the
  target's is the source's warped by the same field, nearest neighbour): 1 skull, 2 brain,
  3 ventricles (the two dark ellipses), 4 the large central ellipse;
- ``phantom3d_{source,target}[_labels].nii.gz``: a 3-D version, 128×128×12 voxels of
  1.5×1.5×4 mm, the phantom shrinking towards the top and bottom slices (an ellipsoid head),
  every slice deformed by the same field.

Seeded: running this again writes identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.data import shepp_logan_phantom

from regcore.data import intensity_augment, photo_pairs, random_fields
from regcore.io import save_image
from regcore.labels import warp_labels
from regcore.warp import warp

HERE = Path(__file__).resolve().parent

SIZE = 256
#: Largest displacement in pixels (each field's peak is drawn in [0.2, 1] × this).
MAX_DISP = 0.08 * SIZE
#: (photographs, contrast change, seed, file-name suffix)
SETS = ((("camera", "coins"), "none", 1, ""), (("astronaut",), "gamma", 2, "_gamma"))
#: The phantom's labels, by value.
PHANTOM_LABELS = {1: "skull", 2: "brain", 3: "ventricles", 4: "central ellipse"}
#: (name, in-plane size, slices (0: 2-D), spacing x, y[, z] in mm, seed)
PHANTOMS = (("phantom", 256, 0, (0.9, 0.9), 3), ("phantom3d", 128, 12, (1.5, 1.5, 4.0), 4))


def phantom_labels(levels: np.ndarray) -> np.ndarray:
    """The Shepp–Logan phantom's gray levels ``(H, W)`` -> labels (see :data:`PHANTOM_LABELS`)."""
    head = ndimage.binary_fill_holes(levels > 0)
    # The central ellipse is the largest region at gray level 0.3 (small spots share its level).
    components, _ = ndimage.label(np.isclose(levels, 0.3, atol=0.01))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    labels = np.where(head, 2, 0)
    labels[np.isclose(levels, 1.0)] = 1
    labels[head & (levels == 0)] = 3
    labels[components == largest] = 4
    return labels.astype(np.int32)


def _shrunk(levels: np.ndarray, size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The phantom (gray levels, labels) at ``size``², shrunk about the centre by ``scale`` (nearest: exact levels)."""
    theta = torch.tensor([[[1 / scale, 0.0, 0.0], [0.0, 1 / scale, 0.0]]])
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=True)
    out = F.grid_sample(torch.from_numpy(levels).float()[None, None], grid, mode="nearest", align_corners=True)[0, 0].numpy()
    return out, phantom_labels(out)


def _to_scanner(images: torch.Tensor, g: torch.Generator) -> np.ndarray:
    """``(n, 1, H, W)`` in [0, 1] -> int16 ``(n, H, W)``: bias field, gamma and noise per image, then 0..1000."""
    return np.round(intensity_augment(images, g, strength=0.7)[:, 0].numpy() * 1000).astype(np.int16)


def _write(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def make_phantom(name: str, size: int, slices: int, spacing: tuple[float, ...], seed: int) -> list[Path]:
    """Write the phantom pair ``name`` and its label maps (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    levels = shepp_logan_phantom()
    depth = max(slices, 1)
    heights = np.linspace(-1, 1, depth) if slices else np.zeros(1)
    planes = [_shrunk(levels, size, float(np.sqrt(1 - 0.7 * h**2))) for h in heights]
    clean = torch.from_numpy(np.stack([p[0] for p in planes])).float()[:, None]
    labels = np.stack([p[1] for p in planes])
    flow = random_fields(1, (size, size), 0.06 * size, g).expand(depth, -1, -1, -1)
    moved = warp(clean, flow)
    moved_labels = np.stack([warp_labels(plane, flow[0].numpy()) for plane in labels])
    arrays = {
        "source": _to_scanner(clean, g),
        "target": _to_scanner(moved, g),
        "source_labels": labels.astype(np.uint8),
        "target_labels": moved_labels.astype(np.uint8),
    }
    return [_write(a if slices else a[0], spacing, HERE / f"{name}_{role}.nii.gz") for role, a in arrays.items()]


def main() -> list[Path]:
    written = []
    for names, contrast, seed, suffix in SETS:
        batch = photo_pairs(SIZE, MAX_DISP, seed, names=names, contrast=contrast)
        for name, source, target in zip(names, batch.source, batch.target, strict=True):
            for role, image in (("source", source), ("target", target)):
                written.append(save_image(HERE / f"{name}{suffix}_{role}.png", image[0].numpy()))
    for phantom in PHANTOMS:
        written += make_phantom(*phantom)
    return written


if __name__ == "__main__":
    for path in main():
        print(path.relative_to(HERE.parent), path.stat().st_size, "bytes")
