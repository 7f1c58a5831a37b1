"""The network's forward pass for inference, made fast on CPU.

:func:`network_flow` is what :func:`regcore.register` calls. On CPU it runs the UNet part of
:class:`regcore.RegNet` (:meth:`RegNet.trunk`) with ONNX Runtime when the optional packages
``onnxruntime`` and ``onnx`` are installed (faster than eager PyTorch, and far steadier when the
CPU is oversubscribed: ``benchmarks/results/speedups.md`` and ``speedups_loaded.md``), else with
PyTorch on channels-last weights (faster than the default layout on CPU). Padding,
integration and resizing of the field stay in PyTorch, so any image size works.

The ONNX export (a few seconds) happens once per model: the file is cached under
``$REGCORE_CACHE`` (default ``~/.cache/regcore``), keyed by a hash of the weights and
architecture, and reused by later processes once it reproduces the PyTorch network on a seeded
input (a cached file that does not is exported again). ``REGCORE_ONNX=0`` turns the ONNX path off. Any
failure to export or load falls back to PyTorch, with a warning, never an error.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .nets import RegNet

__all__ = ["cache_dir", "network_flow", "onnx_enabled", "onnx_session", "session_trunk"]

_sessions: weakref.WeakKeyDictionary[RegNet, dict[int, object]] = weakref.WeakKeyDictionary()
_failed: weakref.WeakSet[RegNet] = weakref.WeakSet()
_lock = threading.Lock()


@functools.cache
def _onnx_installed() -> bool:
    # Looked up once: searching sys.path on every call is a noticeable share of a fast register(method="net").
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def onnx_enabled() -> bool:
    """True when ONNX Runtime inference is possible here and not turned off (``REGCORE_ONNX=0``)."""
    if os.environ.get("REGCORE_ONNX", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _onnx_installed()


def cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$REGCORE_CACHE`` or ``~/.cache/regcore``."""
    return Path(os.environ.get("REGCORE_CACHE", Path.home() / ".cache" / "regcore"))


class _Trunk(nn.Module):
    """``RegNet.trunk`` as a module of its own, for the exporter."""

    def __init__(self, net: RegNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.trunk(x)


def _fingerprint(net: RegNet) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(getattr(net, "_hub_mixin_config", None) or {}, sort_keys=True, default=str).encode())
    digest.update(torch.__version__.encode())
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _cache_path(net: RegNet) -> Path:
    return cache_dir() / f"regnet-trunk-{_fingerprint(net)}.onnx"


def _export(net: RegNet, path: Path, use_cache: bool = True) -> bytes:
    """The ONNX bytes of ``net.trunk`` with dynamic batch and size, read from the cache file
    ``path`` when there (and ``use_cache``); a fresh export is written to ``path``."""
    if use_cache and path.is_file():
        return path.read_bytes()
    example = torch.zeros(1, 2, net.multiple * 2, net.multiple * 2)
    buf = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            _Trunk(net).eval(),
            (example,),
            buf,
            input_names=["pair"],
            output_names=["field"],
            dynamic_axes={"pair": axes, "field": axes},
            dynamo=False,
        )
    data = buf.getvalue()
    try:  # best effort: a read-only home only costs the export again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError:
        pass
    return data


def session_trunk(session) -> Callable[[Tensor], Tensor]:
    """An ONNX Runtime session of ``RegNet.trunk`` as a function to pass as ``RegNet.forward(..., trunk=)``."""

    def trunk(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"pair": x.detach().contiguous().numpy()})[0])

    return trunk


def _agrees(session, net: RegNet) -> bool:
    """Whether ``session`` computes ``net.trunk`` on a seeded input (to 1e-3 of the largest output)."""
    x = torch.rand(1, 2, net.multiple * 2, net.multiple * 2, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = net.trunk(x)
    got = session_trunk(session)(x)
    return got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-3 * max(1.0, float(expected.abs().max()))


def _verified_session(net: RegNet, options):
    """An ONNX Runtime session for ``net``, checked against PyTorch. The cache is keyed by the
    weights but anyone who can write to it could change the file, and a disk can corrupt it, so a
    cached file that disagrees is replaced by a fresh export; a fresh one that disagrees is an error."""
    import onnxruntime as ort

    path = _cache_path(net)
    for use_cache in (True, False):
        session = ort.InferenceSession(_export(net, path, use_cache), options, providers=["CPUExecutionProvider"])
        if _agrees(session, net):
            return session
        if use_cache:
            warnings.warn(f"cached ONNX file {path} does not match the model's weights: exporting it again", stacklevel=3)
            path.unlink(missing_ok=True)
    raise RuntimeError("the ONNX export does not reproduce the PyTorch network")


def onnx_session(net: RegNet, threads: int | None = None):
    """The ONNX Runtime session of ``net.trunk`` for ``threads`` intra-op threads (default torch's),
    created once per (model, thread count); None when unavailable or when it failed before."""
    if not onnx_enabled() or net in _failed:
        return None
    threads = threads or torch.get_num_threads()
    with _lock:
        per_net = _sessions.setdefault(net, {})
        if threads in per_net:
            return per_net[threads]
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # ONNX Runtime's threads otherwise spin after each pass, taking the cores from the
            # PyTorch work that follows (the Lucas-Kanade pyramid) and from other requests.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = _verified_session(net, options)
        except Exception as err:  # any exporter/runtime problem: PyTorch still works
            warnings.warn(f"ONNX Runtime unavailable for this model, using PyTorch ({type(err).__name__}: {err})", stacklevel=2)
            _failed.add(net)
            return None
        per_net[threads] = session
        return session


def network_flow(net: RegNet, source: Tensor, target: Tensor) -> Tensor:
    """``net``'s field for ``(N, 1, H, W)`` pairs: ``(N, 2, H, W)`` pixels, contiguous, outside autograd.

    CPU: ONNX Runtime when available (see the module docstring), else PyTorch with channels-last
    weights. Other devices: plain PyTorch.
    """
    session = onnx_session(net) if source.device.type == "cpu" else None
    if session is not None:
        with torch.inference_mode():
            return net(source, target, trunk=session_trunk(session)).clone(memory_format=torch.contiguous_format)
    if source.device.type == "cpu":
        # Converted in place, outside inference mode (the weights stay trainable), once per cached model.
        net.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return net(source, target).clone(memory_format=torch.contiguous_format)
