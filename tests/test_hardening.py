"""Bad and unusual input: every case ends in a usable image or a one-line RegcoreError.

Complements tests/test_api.py (which covers NaN arrays, empty and 4-D arrays, string dtypes,
missing paths, empty bytes, truncated PNG paths, RGBA arrays, 16-bit PNG and the CLI's
corrupt-file case); nothing here repeats those.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import regcore
from regcore.api import MIN_SIDE
from regcore.errors import ImageError, RegcoreError
from regcore.io import MAX_PIXELS, load_image
from regcore.metrics import endpoint_error
from regcore.warp import warp

ROOT = Path(__file__).resolve().parent.parent


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """A 40×60 8-bit gray test pattern (non-square, so rotations show in the shape)."""
    return (np.random.default_rng(3).random((40, 60)) * 255).astype(np.uint8)


# --- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda g: b"", "the file is empty (0 bytes)"),
        (lambda g: b"just some text, not an image", "not an image file Pillow can read"),
        (lambda g: b"%PDF-1.4\n" + bytes(200), "not an image file Pillow can read"),
        (lambda g: _encode(Image.fromarray(g), "PNG")[:300], "corrupt or truncated"),
        (lambda g: _encode(Image.fromarray(g), "JPEG")[:400], "corrupt or truncated"),
        (lambda g: b"BM" + bytes(60), "corrupt or truncated"),
        (lambda g: _png_header_only(100_000, 100_000), "larger than the limit"),
        (lambda g: _png_header_only(4097, 4097), "4097x4097 is larger than the limit of 16,777,216 pixels"),
    ],
    ids=["zero-byte", "text", "pdf", "truncated-png", "truncated-jpeg", "bad-bmp-header", "bomb-100000²", "just-over-limit"],
)
def test_bad_files_give_one_line_errors_naming_the_file(make, message, gray, tmp_path):
    path = tmp_path / "upload.png"
    path.write_bytes(make(gray))
    with pytest.raises(ImageError, match=re.escape(message)) as err:
        load_image(path, "source")
    assert str(err.value).startswith(f"source ({path})") and "\n" not in str(err.value)


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch):
    # A bomb's header must be refused without the pixels ever being decoded.
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded the pixels"))
    with pytest.raises(ImageError, match="larger than the limit"):
        load_image(_png_header_only(5000, 5000))


def test_a_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_the_extension_does_not_matter(gray, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(_encode(Image.fromarray(gray), "PNG"))
    (tmp_path / "notes.txt").write_bytes(_encode(Image.fromarray(gray), "BMP"))
    for name in ("photo.jpg", "notes.txt"):
        assert np.array_equal(load_image(tmp_path / name), gray / np.float32(255))


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_multi_frame_files_give_the_first_frame_and_say_so(fmt, gray):
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    notes: list[str] = []
    image = load_image(data, "source", notes=notes)
    assert np.abs(image - gray / 255).max() < 0.02  # GIF's palette may round a little
    assert notes == ["source: the file has several frames (animation or multi-page); the first frame was used"]


def test_single_frame_files_add_no_note(gray):
    notes: list[str] = []
    load_image(_encode(Image.fromarray(gray), "GIF"), notes=notes)
    assert notes == []


def test_exif_rotation_is_applied_and_reported(gray):
    image = Image.fromarray(gray)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    notes: list[str] = []
    upright = load_image(_encode(image, "JPEG", exif=exif, quality=95), notes=notes)
    assert upright.shape == (60, 40)
    assert np.abs(upright - np.rot90(gray, -1) / 255).mean() < 0.02
    assert notes == ["image: rotated 90° clockwise as its EXIF orientation says"]


def test_transparent_png_and_palette_are_composited_on_white(gray):
    rgba = Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 0)]), "RGBA")
    notes: list[str] = []
    assert np.allclose(load_image(_encode(rgba, "PNG"), notes=notes), 1.0)
    assert notes == ["image: transparent pixels were composited onto white"]
    palette = Image.fromarray(gray).convert("P")
    notes = []
    image = load_image(_encode(palette, "PNG", transparency=int(np.asarray(palette)[0, 0])), notes=notes)
    assert image[0, 0] == 1.0 and image.min() < 0.5 and len(notes) == 1


def test_high_bit_depth_files_keep_their_range(gray):
    img16 = Image.fromarray(gray.astype(np.uint16) * 257)
    stretched = (gray - gray.min()) / (gray.max() - gray.min())  # 16-bit data: by its actual range
    assert np.allclose(load_image(_encode(img16, "TIFF")), stretched, atol=1e-6)
    values = gray.astype(np.float32) / 255 * 3 - 1  # float TIFF in [-1, 2]
    notes: list[str] = []
    image = load_image(_encode(Image.fromarray(values), "TIFF"), notes=notes)
    assert np.allclose(image, (values - values.min()) / (values.max() - values.min()), atol=1e-6)
    assert notes and "rescaled to [0, 1]" in notes[0]
    wide = Image.fromarray(gray.astype(np.int32) * 1000)  # a 32-bit integer TIFF
    assert np.allclose(load_image(_encode(wide, "TIFF")), (gray - gray.min()) / (gray.max() - gray.min()), atol=1e-6)


def test_float_tiff_with_nan_is_refused():
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_image(_encode(Image.fromarray(np.full((9, 9), np.nan, np.float32)), "TIFF"))


# --- arrays and PIL images ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((9, 9), np.inf), "NaN or infinite"),
        (np.full((9, 9, 3), -np.inf, np.float32), "NaN or infinite"),
        (np.zeros((9, 9), complex), "complex arrays are not images"),
        (np.empty((9, 9), object), "unsupported array dtype object"),
        (np.zeros(9), "got shape (9,)"),
        (np.array(1.0), "got shape ()"),
        (np.zeros((9, 9, 2)), "got shape (9, 9, 2)"),
        (np.zeros((3, 9, 9)), "got shape (3, 9, 9)"),
        (np.zeros((0, 9, 3)), "the image is empty"),
        ([[0.0, 1.0], [1.0, 0.0]], "got list"),
        (None, "got NoneType"),
        (torch.zeros(9, 9), "got Tensor"),
    ],
)
def test_bad_arrays_give_clear_errors(bad, message):
    with pytest.raises(ImageError, match=re.escape(message)):
        load_image(bad, "target")


def test_array_and_pil_limits_are_checked_before_conversion():
    with pytest.raises(ImageError, match=re.escape("20x30 is larger than the limit of 100 pixels")):
        load_image(np.zeros((30, 20, 3), np.uint8), max_pixels=100)
    with pytest.raises(ImageError, match=re.escape("20x30 is larger than the limit of 100 pixels")):
        load_image(Image.new("L", (20, 30)), max_pixels=100)
    assert MAX_PIXELS == 4096 * 4096


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 255]]), [[0.0, 1.0]]),  # numpy's default int64 holding 8-bit data
        (np.array([[0, 65535]], np.int32), [[0.0, 1.0]]),
        (np.array([[0, 1000]], np.uint16), [[0.0, 1.0]]),  # uint16 beyond 8 bits: by its actual range
        (np.array([[0, 200]], np.uint16), [[0.0, 200 / 255]]),  # 8-bit data in a 16-bit container
        (np.array([[1000, 4095]], np.uint16), [[0.0, 1.0]]),  # 12-bit data: not [0.015, 0.06]
        (np.array([[10**6, 3 * 10**6]]), [[0.0, 1.0]]),  # beyond 16 bits: min-max
        (np.array([[-5, 5]], np.int8), [[0.0, 1.0]]),
        (np.array([[True, False]]), [[1.0, 0.0]]),
        (np.array([[0.25, 0.75]], np.float16), [[0.25, 0.75]]),
        (np.array([[-1.7e308, 1.7e308]]), [[0.0, 1.0]]),  # hi - lo overflows float64
        (np.full((2, 2), 7.0), [[0.0, 0.0], [0.0, 0.0]]),
    ],
)
def test_value_ranges(array, expected):
    image = load_image(array)
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert np.allclose(image, expected, atol=1e-6)


def test_bytearray_is_accepted(gray):
    assert np.array_equal(load_image(bytearray(_encode(Image.fromarray(gray), "PNG"))), gray / np.float32(255))


# --- register() --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (7, 64), (64, 3)])
def test_tiny_images_are_refused(shape, no_checkpoints):
    image = np.random.default_rng(0).random(shape)
    big = np.random.default_rng(1).random((32, 32))
    message = f"source: {shape[1]}x{shape[0]} is too small to register; each side needs at least {MIN_SIDE} px"
    with pytest.raises(RegcoreError, match=re.escape(message)):
        regcore.register(image, big, method="optimize", refine_steps=1)
    with pytest.raises(RegcoreError, match=r"target: \d+x\d+ is too small"):
        regcore.register(big, image, method="optimize", refine_steps=1)


def test_the_smallest_accepted_image_registers(no_checkpoints):
    rng = np.random.default_rng(0)
    result = regcore.register(rng.random((MIN_SIDE, MIN_SIDE)), rng.random((MIN_SIDE, MIN_SIDE)), method="optimize", refine_steps=2)
    assert result.flow.shape == (2, MIN_SIDE, MIN_SIDE) and np.isfinite(result.flow).all()


def test_constant_images_are_handled_and_explained(photo, no_checkpoints):
    flat = np.full((48, 48), 0.4, np.float32)
    for source, target, which in ((flat, photo[:48, :48], "source"), (photo[:48, :48], flat, "target"), (flat, flat, "source")):
        result = regcore.register(source, target, method="optimize", refine_steps=5)
        assert any(f"the {which} image is constant: NCC is undefined" in note for note in result.notes)
        assert np.isfinite(result.flow).all() and np.isfinite(result.warped).all()
        assert all(np.isfinite(v) for v in (*result.before.values(), *result.after.values()))
        json.dumps(result.metrics(), allow_nan=False)  # metrics.json stays valid JSON


def test_warped_image_stays_within_0_1(no_checkpoints):
    # Found by the fuzz test: interpolating between pixels of 1.0 gave 1.0000001 (float32 weights
    # summing to 1 + 1 ulp). A mostly white image moved by a fractional field shows it.
    rng = np.random.default_rng(0)
    for _ in range(3):
        source = np.ones((64, 64), np.float32)
        source[rng.integers(0, 64, 20), rng.integers(0, 64, 20)] = 0.0
        result = regcore.register(source, np.roll(source, (1, 2), (0, 1)), method="optimize", refine_steps=20)
        assert result.warped.min() >= 0.0 and result.warped.max() <= 1.0


def test_loader_notes_reach_the_result(gray, no_checkpoints):
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result = regcore.register(gif, gray, method="optimize", refine_steps=1)
    assert any(note.startswith("source: the file has several frames") for note in result.notes)


def test_large_images_are_registered_small_and_the_field_scaled_back(photo, no_checkpoints):
    # A smooth 192² image shifted by (6, -4) px; registered at 48² (a quarter), the field must
    # come back in full-size pixels: 6 and -4, not 1.5 and -1.
    big = torch.nn.functional.interpolate(torch.from_numpy(photo)[None, None], size=(192, 192), mode="bilinear", align_corners=True)
    true = torch.zeros(1, 2, 192, 192)
    true[:, 0], true[:, 1] = 6.0, -4.0
    target = warp(big, true)[0, 0].numpy()
    result = regcore.register(big[0, 0].numpy(), target, method="optimize", similarity="mse", refine_steps=60, max_side=48)
    assert any("registered at 48x48" in note and "scaled back" in note for note in result.notes)
    assert endpoint_error(result.flow, true[0].numpy(), margin=24) < 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"similarity": "bogus"}, "unknown similarity 'bogus'"),
        ({"device": "banana"}, "unknown device 'banana'"),
        ({"reg_weight": float("nan")}, "reg_weight must be a finite number >= 0"),
        ({"reg_weight": -1.0}, "reg_weight must be a finite number >= 0"),
        ({"reg_weight": "1"}, "reg_weight must be a finite number >= 0"),
        ({"refine_steps": 2.5}, "refine_steps must be a whole number >= 0"),
        ({"refine_steps": True}, "refine_steps must be a whole number >= 0"),
        ({"max_side": 8}, "max_side must be a whole number of at least 16"),
        ({"max_side": 100.0}, "max_side must be a whole number of at least 16"),
        ({"progress": 5}, "progress must be a function"),
        ({"timeout_s": 0}, "timeout_s must be a number of seconds > 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(kwargs, message, photo, no_checkpoints):
    with pytest.raises(RegcoreError, match=re.escape(message)):
        regcore.register(photo, photo, method="optimize", **{"refine_steps": 1, **kwargs})


def test_time_budget_stops_a_long_registration(photo, no_checkpoints):
    steps: list[int] = []
    with pytest.raises(RegcoreError, match=r"registration took longer than 0\.05 s and was stopped after \d+ of \d+ steps"):
        regcore.register(
            photo, photo, method="optimize", refine_steps=20_000, timeout_s=0.05, progress=lambda done, total, loss: steps.append(done)
        )
    assert 0 < len(steps) < 20_000  # stopped early, and the caller's progress callback still ran
    quick = regcore.register(photo, photo, method="optimize", refine_steps=2, timeout_s=60)
    assert quick.flow.shape == (2, *photo.shape)


def test_a_diverging_optimisation_stops_instead_of_crashing():
    # A NaN field reaching grid_sample's backward segfaults torch 2.13 on CPU, which would take a
    # server down with it; run in a child process so that a regression fails this test only.
    code = (
        "import torch\n"
        "from regcore.optimize import optimize_flow\n"
        "from regcore.errors import RegcoreError\n"
        "x = torch.rand(1, 1, 24, 24)\n"
        "for init, weight in ((torch.full((1, 2, 24, 24), float('nan')), 1.0), (None, float('inf'))):\n"
        "    try:\n"
        "        optimize_flow(x, x.flip(-1), init, steps=5, reg_weight=weight)\n"
        "    except RegcoreError as err:\n"
        "        print(err)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.count("the optimisation diverged: the field became NaN or infinite") == 2


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_refuses_each_kind_of_bad_input_in_one_line(gray, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(gray).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    Image.fromarray(gray[:4, :4]).save(tmp_path / "tiny.png")
    # One process for all cases keeps the test quick: main() is what `python -m regcore` runs,
    # and each call must print exactly one line and return 2.
    code = (
        "import sys\nfrom regcore.cli import main\n"
        "good, out = sys.argv[1], sys.argv[2]\n"
        "for name in sys.argv[3:]:\n"
        "    extra = ['--device', 'banana'] if name == good else []\n"
        "    code = main(['register', name, good, '--out', out, '--refine-steps', '1', *extra])\n"
        "    print('exit', code, file=sys.stderr)\n"
    )
    names = [str(tmp_path / n) for n in ("empty.png", "bomb.png", "tiny.png", "missing.png", "good.png")]
    env = {"REGCORE_CHECKPOINTS": "/nonexistent", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-c", code, str(good), str(tmp_path / "out"), *names]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert "Traceback" not in run.stderr and len(lines) == 2 * len(names), run.stderr
    assert lines[1::2] == ["exit 2"] * len(names)
    messages = lines[::2]
    for name, message in zip(names[:4], messages, strict=False):
        assert message.startswith(f"error: source ({name}): ")
    assert "the file is empty (0 bytes)" in messages[0]
    assert "larger than the limit" in messages[1]
    assert "4x4 is too small to register" in messages[2]
    assert "no such file" in messages[3]
    assert messages[4] == "error: unknown device 'banana'; use 'cpu', 'cuda' or 'auto'"
    assert not (tmp_path / "out").exists()
