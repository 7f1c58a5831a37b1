"""Regenerate the example pairs shipped with the app: ``python examples/make_examples.py`` (with regcore installed,
e.g. ``pip install -e .``).

Each pair is a scikit-image sample photograph (``source``) and the same photograph deformed by a
known smooth random field from :func:`regcore.data.photo_pairs` (``target``), 256×256 gray PNG.
The ``*_gamma`` pair also changes the target's contrast (gamma 0.5 or 2), which local NCC ignores
and MSE does not. Seeded: running this again writes identical files.
"""

from __future__ import annotations

from pathlib import Path

from regcore.data import photo_pairs
from regcore.io import save_image

HERE = Path(__file__).resolve().parent

SIZE = 256
#: Largest displacement in pixels (each field's peak is drawn in [0.2, 1] × this).
MAX_DISP = 0.08 * SIZE
#: (photographs, contrast change, seed, file-name suffix)
SETS = ((("camera", "coins"), "none", 1, ""), (("astronaut",), "gamma", 2, "_gamma"))


def main() -> list[Path]:
    written = []
    for names, contrast, seed, suffix in SETS:
        batch = photo_pairs(SIZE, MAX_DISP, seed, names=names, contrast=contrast)
        for name, source, target in zip(names, batch.source, batch.target, strict=True):
            for role, image in (("source", source), ("target", target)):
                written.append(save_image(HERE / f"{name}{suffix}_{role}.png", image[0].numpy()))
    return written


if __name__ == "__main__":
    for path in main():
        print(path.relative_to(HERE.parent), path.stat().st_size, "bytes")
