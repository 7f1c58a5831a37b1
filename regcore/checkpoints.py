"""Model checkpoints: a folder holding ``model.safetensors`` + ``config.json`` (+ ``README.md`` card).

Only safetensors weights are read (no pickle). The config must name only :class:`RegNet`
arguments, with values of the right types and within bounds (a config cannot make the network
allocate or pad without limit), and the weights must be finite floating-point tensors matching
the network it builds (checked from the safetensors header before any weight is read), or a
:class:`CheckpointError` naming the file is raised.

Shipped checkpoints live in ``checkpoints/`` at the repository top, and an installed package
carries them as ``regcore/models/`` (package data, see ``pyproject.toml``); ``REGCORE_CHECKPOINTS``
points elsewhere (:func:`checkpoint_dir`).

The network is reached only when asked for explicitly: a model named ``hf:user/repo`` (the
prefix :data:`HUB_PREFIX`) is fetched from the Hugging Face Hub with ``huggingface_hub``; offline,
that fails with a clear error and never hangs when ``HF_HUB_OFFLINE=1``. Any other name is a
folder or a shipped checkpoint, and an unknown one is a one-line :class:`CheckpointError` that
lists the shipped ones (a typo such as ``runs/ncc`` is never taken for a Hub repo).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors

from .errors import CheckpointError
from .nets import RegNet

__all__ = [
    "CONFIG_NAME",
    "HUB_PREFIX",
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
#: A model name with this prefix is a Hugging Face Hub repo id (``hf:user/repo``): the only way
#: the library makes a network request.
HUB_PREFIX = "hf:"
#: Bounds on a config's values: RegNet pads inputs to a multiple of ``2 ** len(enc_features)``,
#: and its weights grow with the square of the feature counts.
MAX_LEVELS = 8
MAX_FEATURES = 1024
MAX_INT_STEPS = 32
#: safetensors dtypes accepted for weights (they are cast to the network's float32).
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

_cache: dict[tuple[str, float], RegNet] = {}
_lock = threading.Lock()


def checkpoint_dir() -> Path:
    """Where shipped checkpoints are looked for: ``$REGCORE_CHECKPOINTS`` if set; else the package's
    ``models/`` folder when installed from a wheel; else ``checkpoints/`` beside the package (a
    checkout, or an editable install of one)."""
    if "REGCORE_CHECKPOINTS" in os.environ:
        return Path(os.environ["REGCORE_CHECKPOINTS"])
    package = Path(__file__).resolve().parent
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "checkpoints"


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
    text = str(model)
    if isinstance(model, str) and text.startswith(HUB_PREFIX):
        return _from_hub(text[len(HUB_PREFIX) :])
    shipped = available_models()
    if text in shipped:
        return shipped[text]
    raise CheckpointError(
        f"no checkpoint {text!r}: not a checkpoint folder, and the shipped models are {', '.join(shipped) or 'none'}"
        f" (a Hugging Face Hub model needs the prefix {HUB_PREFIX}, as in {HUB_PREFIX}user/repo)"
    )


def _from_hub(repo_id: str) -> Path:
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{HUB_PREFIX}{repo_id!r} is not a Hugging Face Hub repo id; expected {HUB_PREFIX}user/repo")
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
    for key, value in config.items():
        problem = _config_problem(key, value)
        if problem:
            raise CheckpointError(f"{file}: {key} {problem}, got {value!r}")
    return config


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_problem(key: str, value: object) -> str | None:
    """What is wrong with one config value, or None (JSON types: lists of ints, ints)."""
    if key.endswith("_features"):
        longest = MAX_LEVELS + 1 if key == "dec_features" else MAX_LEVELS
        if not isinstance(value, list) or len(value) > longest or not all(_is_int(v) and 1 <= v <= MAX_FEATURES for v in value):
            return f"must be a list of at most {longest} whole numbers from 1 to {MAX_FEATURES}"
    elif key == "int_steps" and not (_is_int(value) and 0 <= value <= MAX_INT_STEPS):
        return f"must be a whole number from 0 to {MAX_INT_STEPS}"
    elif key == "int_downsize" and not (_is_int(value) and value in (1, 2, 4)):
        return "must be 1, 2 or 4"
    return None


def _check_header(weights: Path, config: dict) -> None:
    """Compare the safetensors header (names, shapes, dtypes) with the network the config builds.

    Nothing is allocated: the network is built on the meta device and the file's tensors are
    not read, so a mismatched or hostile checkpoint costs no memory.
    """
    try:
        with safe_open(weights, framework="pt") as fh:
            header = {key: (tuple(fh.get_slice(key).get_shape()), fh.get_slice(key).get_dtype()) for key in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in RegNet(**config).state_dict().items()}
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise CheckpointError(f"{weights}: weights do not match the config's network ({detail})")
    for key, shape in expected.items():
        if header[key][0] != shape:
            found = header[key][0]
            raise CheckpointError(f"{weights}: weights do not match the config's network ({key} has shape {found}, expected {shape})")
        if header[key][1] not in FLOAT_DTYPES:
            raise CheckpointError(f"{weights}: {key} has dtype {header[key][1]}; weights must be floating point")


def load_model(model: str | os.PathLike, device: str | torch.device = "cpu") -> RegNet:
    """Load a checkpoint folder, a shipped checkpoint name or a Hub repo id (``hf:user/repo``); cached, in eval mode.

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
            with torch.device("meta"):  # validates the arguments without allocating anything
                RegNet(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path / CONFIG_NAME}: invalid RegNet arguments ({err})") from None
        _check_header(weights, config)
        try:
            # Read into memory rather than memory-map: a file replaced while mapped (a training run
            # writing a new checkpoint) would kill the process with SIGBUS. Its size is bounded by
            # the header just checked, and the header by the config's bounds.
            state = load_safetensors(weights.read_bytes())
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
        bad = next((k for k, t in state.items() if not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise CheckpointError(f"{weights}: {bad} contains NaN or infinite values")
        net = RegNet(**config)
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
