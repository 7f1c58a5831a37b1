"""The ablation script of the default path (pyramid, patches, fusion, boundaries, refinement) runs end to end and says what it measured."""

from benchmarks import ablations


def test_ablations_write_every_variant_and_the_pyramid_beats_the_network_alone(tmp_path):
    assert ablations.main(["--sets", "photo128", "--pairs", "2", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "ablations.md").read_text()
    assert "python -m benchmarks.ablations --sets photo128 --pairs 2" in text
    rows = {
        cells[1]: float(cells[2])
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| variant") and (cells := [c.strip() for c in line.split("|")])
    }
    baselines = {"register() default", "register(method='net')", "dis-fine"}
    variants = (
        ablations.VARIANTS,
        ablations.PATCH_VARIANTS,
        ablations.BOUNDARY_VARIANTS,
        ablations.VARIATIONAL_VARIANTS,
        ablations.CHAIN_VARIANTS,
    )
    assert set().union(*variants) | baselines <= set(rows)
    assert rows["pyramid, defaults"] < 0.7 * rows["network alone (polish=False)"]
    # The script's baselines are register()'s paths: the same pyramid from the same network field, and
    # the same fusion of it with the same search (here one after the other, in register() side by side),
    # its boundaries sharpened and refined.
    assert abs(rows["pyramid, defaults"] - rows["register(method='net')"]) < 0.02
    assert abs(rows["sharpened, then refined near the boundaries (defaults)"] - rows["register() default"]) < 0.02
    assert (tmp_path / "ablations.csv").read_text().count("\n") == len(rows) + 1
