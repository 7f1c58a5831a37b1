"""The exceptions regcore raises for bad input; each message is one readable line."""

from __future__ import annotations

__all__ = ["CheckpointError", "ImageError", "RegcoreError"]


class RegcoreError(ValueError):
    """Base class: something the user gave cannot be used. ``str(err)`` is a one-line message."""


class ImageError(RegcoreError):
    """An image could not be read or is not usable (corrupt, empty, NaN, too large, ...)."""


class CheckpointError(RegcoreError):
    """A model checkpoint is missing, corrupt or does not match the network."""
