"""Checkpoints are safe to load: safetensors + a validated JSON config only, never pickle.

Complements tests/test_nets.py (non-safetensors bytes, a config of the wrong architecture, an
unknown config key, a missing checkpoint, a Hub id offline); nothing here repeats those.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from regcore.checkpoints import available_models, file_sha256, load_model, save_model
from regcore.errors import CheckpointError
from regcore.nets import RegNet

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"enc_features": [4, 8, 8], "dec_features": [8, 8, 8], "final_features": [4]}


@pytest.fixture
def folder(tmp_path) -> Path:
    """A valid small checkpoint folder."""
    return save_model(RegNet(**SMALL), tmp_path / "m")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    # Cloned: load_file memory-maps, and the tests overwrite the file.
    return {k: v.clone() for k, v in load_file(folder / "model.safetensors").items()}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"enc_features": "abc"}, "enc_features must be a list of at most 8 whole numbers from 1 to 1024"),
        ({"enc_features": [4.5, 8, 8]}, "enc_features must be a list"),
        ({"enc_features": [-1, 8, 8]}, "enc_features must be a list"),
        ({"enc_features": [100_000] * 3}, "enc_features must be a list"),  # would allocate ~1 TB of weights
        ({"enc_features": [1] * 20}, "enc_features must be a list"),  # would pad every input to a multiple of 2**20
        ({"int_steps": "7"}, "int_steps must be a whole number from 0 to 32"),
        ({"int_steps": True}, "int_steps must be a whole number"),
        ({"int_downsize": 3}, "int_downsize must be 1, 2 or 4"),
        ({"dec_features": [8, 8]}, "invalid RegNet arguments (dec_features needs 3 entries"),
    ],
)
def test_config_values_are_validated(change, message, folder):
    config = folder / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    with pytest.raises(CheckpointError, match=re.escape(message)) as err:
        load_model(folder)
    assert str(err.value).startswith(str(config))


@pytest.mark.parametrize("text", ["[1, 2]", "null", "{not json", "\xff\xfe"])
def test_config_that_is_not_an_object(text, folder):
    (folder / "config.json").write_text(text, encoding="latin-1")
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json"))):
        load_model(folder)


def test_truncated_or_padded_safetensors(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    for broken in (data[: len(data) // 2], data + b"\0" * 16, data[:6]):
        weights.write_bytes(broken)
        with pytest.raises(CheckpointError, match=re.escape(f"{weights}: not a readable safetensors file")):
            load_model(folder)


def test_extra_missing_and_reshaped_tensors(folder):
    weights, state = folder / "model.safetensors", _weights(folder)
    save_file({**state, "backdoor": torch.zeros(3)}, weights)
    with pytest.raises(CheckpointError, match=re.escape("do not match the config's network (unexpected ['backdoor'])")):
        load_model(folder)
    first = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != first}, weights)
    with pytest.raises(CheckpointError, match=re.escape(f"(missing ['{first}'])")):
        load_model(folder)
    conv = next(k for k in sorted(state) if state[k].ndim == 4)
    save_file({**state, conv: state[conv].flatten(1)}, weights)
    with pytest.raises(CheckpointError, match=re.escape(f"({conv} has shape")):
        load_model(folder)


def test_non_float_and_non_finite_weights(folder):
    weights, state = folder / "model.safetensors", _weights(folder)
    save_file({k: v.to(torch.int32) for k, v in state.items()}, weights)
    with pytest.raises(CheckpointError, match="has dtype I32; weights must be floating point"):
        load_model(folder)
    poisoned = dict(state)
    key = sorted(state)[-1]
    poisoned[key] = state[key].clone().fill_(float("nan"))
    save_file(poisoned, weights)
    with pytest.raises(CheckpointError, match=re.escape(f"{weights}: {key} contains NaN or infinite values")):
        load_model(folder)


def test_half_precision_weights_load_as_float32(folder):
    state = _weights(folder)
    save_file({k: v.half() for k, v in state.items()}, folder / "model.safetensors")
    net = load_model(folder)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.flow.bias, state["flow.bias"].half().float())


def test_no_pickle_path_anywhere():
    # Weights and fields must never go through pickle: no torch.load, no pickle module, and
    # every np.load says allow_pickle=False.
    sources = [*ROOT.glob("regcore/*.py"), *ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("webapp/*.py")]
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\btorch\.load\(|\bimport pickle\b|\bpickle\.loads?\(|\bjoblib\b", text), path
        for call in re.findall(r"np\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (path, call)


def _card_problem(folder: Path) -> str | None:
    """Why ``folder``'s model card does not vouch for its weights, or None."""
    card = folder / "README.md"
    if not card.is_file():
        return f"{folder}: no model card"
    # train.py writes a table row: | weights sha256 | `<64 hex digits>` |
    recorded = re.search(r"weights sha256\s*\|\s*`([0-9a-f]{64})`", card.read_text())
    if not recorded:
        return f"{card}: no 'weights sha256' row"
    if recorded.group(1) != file_sha256(folder / "model.safetensors"):
        return f"{card}: the recorded hash does not match model.safetensors"
    return None


def test_the_card_check_catches_a_stale_hash(folder):
    row = "| weights sha256 | `{}` |\n"
    (folder / "README.md").write_text("# card\n" + row.format(file_sha256(folder / "model.safetensors")))
    assert _card_problem(folder) is None
    (folder / "README.md").write_text("# card\n" + row.format("0" * 64))
    assert "does not match" in _card_problem(folder)
    (folder / "README.md").write_text("# card without a hash\n")
    assert "no 'weights sha256' row" in _card_problem(folder)


def test_shipped_model_cards_record_the_weights_hash():
    models = available_models()
    if not models:
        pytest.skip("no checkpoint shipped in checkpoints/")
    problems = [_card_problem(path) for path in models.values()]
    assert not any(problems), problems
