"""Medical formats through regcore.io.load_image (regcore.volumes): NIfTI, DICOM, MetaImage, NRRD,
3-D volumes through a slice, robust windowing, spacing, and one-line errors for bad files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from regcore.errors import ImageError, RegcoreError
from regcore.io import load_image, load_labels
from regcore.volumes import WINDOW_PERCENTILES, Slicing, medical_format, pixel_spacing, scan_info

SPACING_3D = (0.5, 0.75, 2.5)  # x, y, z in mm


def _write(path, array: np.ndarray, spacing: tuple[float, ...]) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


def _expected_window(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values.astype(np.float64), WINDOW_PERCENTILES)
    return np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """A 3-D int16 volume indexed [z, y, x]: 6 slices of 20 x 30 (x * y * z = 30 x 20 x 6), every voxel distinct."""
    return (np.arange(6 * 20 * 30).reshape(6, 20, 30) * 3 - 900).astype(np.int16)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm"])
def test_2d_files_of_each_format_read_windowed_with_their_spacing(tmp_path, suffix):
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 3000, (24, 40)).astype(np.int16)
    path = _write(tmp_path / f"slice{suffix}", image, (0.6, 1.2))  # x (columns), y (rows)
    notes: list[str] = []
    loaded = load_image(path, "source", notes=notes)
    assert loaded.shape == (24, 40) and loaded.dtype == np.float32
    assert np.allclose(loaded, _expected_window(image), atol=1e-6)
    assert pixel_spacing(path) == pytest.approx((1.2, 0.6))  # (rows, columns)
    assert any("windowed" in note for note in notes)
    assert medical_format(path) is not None


def test_robust_window_ignores_a_few_extreme_voxels(tmp_path):
    image = np.full((50, 50), 100, np.int16)
    image[10:40, 10:40] = 200
    image[0, :3] = 30000  # metal: 3 voxels in 2500
    loaded = load_image(_write(tmp_path / "ct.nii.gz", image, (1, 1)))
    assert loaded[20, 20] == 1.0 and loaded[0, 10] == 0.0  # the bulk spans the whole range, not 0..0.007
    assert loaded[0, 0] == 1.0  # the outlier is clipped


@pytest.mark.parametrize(
    ("axis", "index", "expected", "spacing"),
    [
        ("z", None, lambda v: v[3], (0.75, 0.5)),  # middle of 6
        ("z", 0, lambda v: v[0], (0.75, 0.5)),
        ("y", 7, lambda v: v[:, 7, :], (2.5, 0.5)),  # rows along z, columns along x
        ("x", 29, lambda v: v[:, :, 29], (2.5, 0.75)),  # rows along z, columns along y
        ("x", None, lambda v: v[:, :, 15], (2.5, 0.75)),
    ],
)
def test_3d_volumes_give_the_chosen_slice_and_its_spacing(tmp_path, volume, axis, index, expected, spacing):
    path = _write(tmp_path / "vol.nii.gz", volume, SPACING_3D)
    slicing = Slicing(axis, index)
    notes: list[str] = []
    image = load_image(path, "source", notes=notes, slicing=slicing)
    assert np.allclose(image, _expected_window(expected(volume)), atol=1e-6)
    assert pixel_spacing(path, slicing) == pytest.approx(spacing)
    assert any(f"slice {axis}=" in note for note in notes)
    assert scan_info(path).size == (30, 20, 6) and scan_info(path).is_volume


def test_raw_label_slices_match_numpy_indexing(tmp_path, volume):
    labels = (volume - volume.min()).astype(np.uint16)
    path = _write(tmp_path / "labels.nrrd", labels, SPACING_3D)
    assert np.array_equal(load_labels(path, slicing=Slicing("y", 7)), labels[:, 7, :])
    assert np.array_equal(load_labels(path, slicing=Slicing("x", 2)), labels[:, :, 2])
    assert np.array_equal(load_labels(path), labels[3])


def test_a_2d_image_stored_with_one_slice_is_2d(tmp_path):
    image = np.arange(12 * 16, dtype=np.int16).reshape(1, 12, 16)
    path = _write(tmp_path / "one.nii", image, (1.0, 2.0, 3.0))
    notes: list[str] = []
    assert load_image(path, notes=notes, slicing=Slicing("x", 5000)).shape == (12, 16)  # the slice options do not apply
    assert not any("slice" in note for note in notes) and not scan_info(path).is_volume


def test_files_are_recognised_by_content_and_bytes_work(tmp_path, volume):
    path = _write(tmp_path / "scan.dcm", volume[0].astype(np.int16), (0.5, 0.5))
    bare = tmp_path / "IM0001"  # DICOM files often have no suffix
    bare.write_bytes((tmp_path / "scan.dcm").read_bytes())
    assert medical_format(bare) == "DICOM"
    assert np.allclose(load_image(bare), load_image(path))
    nii = _write(tmp_path / "v.nii.gz", volume, SPACING_3D)
    data = (tmp_path / "v.nii.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b" and medical_format(data) == "NIfTI"
    assert np.allclose(load_image(data, slicing=Slicing("y", 3)), load_image(nii, slicing=Slicing("y", 3)))
    assert medical_format(gzip.compress(b"not an image")) is None
    assert medical_format(np.zeros((4, 4))) is None


def test_rgb_becomes_gray(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, 8:, 0] = 255
    image = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    notes: list[str] = []
    gray = load_image(tmp_path / "rgb.nrrd", notes=notes)
    assert gray.shape == (16, 16) and gray[0, 0] == 0 and gray[0, 15] == 1 and any("luminance" in n for n in notes)
    with pytest.raises(ImageError, match="one integer label per pixel"):
        load_labels(tmp_path / "rgb.nrrd")


def _file(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _four_d(tmp_path, volume) -> str:
    series = sitk.JoinSeries([sitk.GetImageFromArray(volume)] * 2)  # x * y * z * t
    sitk.WriteImage(series, str(tmp_path / "4d.nii.gz"))
    return str(tmp_path / "4d.nii.gz")


def _truncated(tmp_path, volume) -> str:
    _write(tmp_path / "full.nii.gz", volume, SPACING_3D)
    data = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, vol: str(tmp / "absent.nii.gz"), "no such file"),
        (lambda tmp, vol: _file(tmp / "empty.nii", b""), "empty"),
        (lambda tmp, vol: _file(tmp / "junk.nii.gz", b"\x1f\x8b junk"), "not a readable NIfTI file"),
        (lambda tmp, vol: _file(tmp / "junk.dcm", b"x" * 500), "not a readable DICOM file"),
        (_truncated, "corrupt or truncated"),
        (_four_d, "a 4-D image"),
        (lambda tmp, vol: _write(tmp / "nan.mha", np.full((8, 8), np.nan, np.float32), (1, 1)), "NaN"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, volume, make, message):
    path = make(tmp_path, volume)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path, "source")
    assert "\n" not in str(info.value) and str(info.value).startswith(f"source ({path})")


def test_slice_options_are_checked(tmp_path, volume):
    path = _write(tmp_path / "vol.mha", volume, SPACING_3D)
    with pytest.raises(ImageError, match=r"slice z=6 is outside the volume \(6 slices along z: 0..5\)"):
        load_image(path, "source", slicing=Slicing("z", 6))
    for axis, index in (("w", None), ("z", -1), ("z", 1.5), ("z", True)):
        with pytest.raises(RegcoreError, match="slice"):
            Slicing(axis, index)


def test_pixel_limits_are_checked_from_the_header(tmp_path, volume):
    path = _write(tmp_path / "vol.nii", volume, SPACING_3D)
    with pytest.raises(ImageError, match="larger than the limit of 500 pixels"):
        load_image(path, max_pixels=500)  # a z slice is 30 x 20 = 600 px
    assert load_image(path, max_pixels=500, slicing=Slicing("y")).shape == (6, 30)


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.array([[0.5, 1.0]] * 4, np.float32), "whole numbers"), (np.array([[-1, 2]] * 4, np.int16), "from 0 to 65535")],
)
def test_label_maps_must_hold_whole_non_negative_labels(tmp_path, array, message):
    with pytest.raises(ImageError, match=message):
        load_labels(_write(tmp_path / "labels.nii.gz", array, (1, 1)), "source labels")
    with pytest.raises(ImageError, match=message):
        load_labels(array, "source labels")
    assert load_labels(np.array([[0.0, 3.0]] * 4, np.float32)).dtype == np.int32  # whole-number floats are fine
