"""Model checkpoints: a folder holding ``model.safetensors`` + ``config.json`` (+ ``README.md`` card).

Only safetensors weights are read (no pickle). The config must name only :class:`RegNet`
arguments and the weights must match the network it builds, or a :class:`CheckpointError`
naming the file is raised. Shipped checkpoints live in ``checkpoints/`` at the repository top;
``REGCORE_CHECKPOINTS`` points elsewhere. A Hugging Face Hub repo id (``user/repo``) is fetched
with ``huggingface_hub`` when it is not a local folder; offline, that fails with a clear error
and never hangs when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError
from .nets import RegNet

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "available_models",
    "checkpoint_dir",
    "default_model_name",
    "file_sha256",
    "load_model",
    "save_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The shipped model ``register()`` uses unless told otherwise (the local-NCC one).
DEFAULT_MODEL = "ncc"

_cache: dict[tuple[str, float], RegNet] = {}
_lock = threading.Lock()


def checkpoint_dir() -> Path:
    """Where shipped checkpoints are looked for: ``$REGCORE_CHECKPOINTS`` or ``<repo>/checkpoints``."""
    return Path(os.environ.get("REGCORE_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))


def available_models() -> dict[str, Path]:
    """Shipped checkpoints by name (folder name), sorted, default first."""
    root = checkpoint_dir()
    found = sorted(p.parent for p in root.glob(f"*/{WEIGHTS_NAME}") if (p.parent / CONFIG_NAME).is_file()) if root.is_dir() else []
    found.sort(key=lambda p: p.name != DEFAULT_MODEL)
    return {p.name: p for p in found}


def default_model_name() -> str | None:
    """The model ``register()`` uses by default, or None when no checkpoint is shipped."""
    models = available_models()
    return next(iter(models), None)


def _resolve(model: str | os.PathLike) -> Path:
    path = Path(model)
    if path.is_dir():
        return path
    if path.name == WEIGHTS_NAME and path.is_file():
        return path.parent
    shipped = available_models()
    if str(model) in shipped:
        return shipped[str(model)]
    text = str(model)
    if text.count("/") == 1 and not path.exists():
        return _from_hub(text)
    raise CheckpointError(f"no checkpoint named {text!r}: not a folder, and the shipped ones are {', '.join(shipped) or 'none'}")


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        weights = hf_hub_download(repo_id, WEIGHTS_NAME)
        hf_hub_download(repo_id, CONFIG_NAME)
    except (OSError, ValueError) as err:  # offline, missing repo, HTTP errors all derive from OSError
        raise CheckpointError(f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__})") from None
    return Path(weights).parent


def _read_config(path: Path) -> dict:
    file = path / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: expected a JSON object of RegNet arguments")
    allowed = set(inspect.signature(RegNet.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise CheckpointError(f"{file}: unknown RegNet arguments {unknown}")
    return config


def load_model(model: str | os.PathLike, device: str | torch.device = "cpu") -> RegNet:
    """Load a checkpoint folder, a shipped checkpoint name or a Hub repo id; cached, in eval mode.

    Raises:
        CheckpointError: missing, corrupt, or not matching the network; the message names the file.
    """
    path = _resolve(model)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    key = (f"{weights.resolve()}@{device}", weights.stat().st_mtime)
    with _lock:
        if key in _cache:
            return _cache[key]
        config = _read_config(path)
        try:
            net = RegNet(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path / CONFIG_NAME}: invalid RegNet arguments ({err})") from None
        try:
            state = load_file(weights)
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
        expected = net.state_dict()
        mismatch = sorted(set(expected) ^ set(state)) + sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if mismatch:
            raise CheckpointError(f"{weights}: weights do not match the config's network (e.g. {mismatch[0]})")
        net.load_state_dict(state, strict=True)
        net = net.to(device).eval()
        _cache[key] = net
        return net


def save_model(net: RegNet, path: str | os.PathLike, card: str | None = None) -> Path:
    """Write ``net`` to the folder ``path`` (safetensors + config.json, plus ``card`` as README.md)."""
    path = Path(path)
    net.save_pretrained(path)
    if card is not None:
        (path / "README.md").write_text(card)
    elif (path / "README.md").exists() and not (path / "README.md").read_text().strip():
        (path / "README.md").unlink()
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded in model cards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
