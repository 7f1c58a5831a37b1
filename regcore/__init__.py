"""regcore: learning-based 2-D deformable image registration.

Find the UNet in :mod:`regcore.nets`, the warp layer in :mod:`regcore.warp`, the losses (local
NCC, MSE, smoothness) in :mod:`regcore.losses`. Most users need only :func:`register`
(:func:`register_many` for a CSV of pairs; medical formats in :mod:`regcore.volumes`, label maps
in :mod:`regcore.labels`).
"""

from .api import METHODS, RegistrationResult, register
from .checkpoints import available_models, load_model, save_model
from .errors import CheckpointError, ImageError, RegcoreError
from .io import load_image, load_labels, save_image
from .many import register_many
from .nets import RegNet
from .warp import SpatialTransformer, VecInt, compose, warp

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "CheckpointError",
    "ImageError",
    "RegNet",
    "RegcoreError",
    "RegistrationResult",
    "SpatialTransformer",
    "VecInt",
    "available_models",
    "compose",
    "load_image",
    "load_labels",
    "load_model",
    "register",
    "register_many",
    "save_image",
    "save_model",
    "warp",
]
