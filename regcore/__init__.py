"""regcore: learning-based 2-D deformable image registration.

Find the UNet in :mod:`regcore.nets`, the warp layer in :mod:`regcore.warp`, the losses (local
NCC, MSE, smoothness) in :mod:`regcore.losses`. Most users need only :func:`register`.
"""

from .api import METHODS, RegistrationResult, register
from .checkpoints import available_models, load_model, save_model
from .errors import CheckpointError, ImageError, RegcoreError
from .io import load_image, save_image
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
    "load_model",
    "register",
    "save_image",
    "save_model",
    "warp",
]
