"""Small example networks and specifications bundled with veracity (used by ``veracity demo``).

The files are produced by :mod:`veracity.examples.make_digits`.
"""

from __future__ import annotations

import pathlib
from importlib.resources import files

DIGITS_ONNX = "digits_mlp.onnx"
DIGITS_SPEC = "digits_robust.vnnlib"
DIGITS_META = "digits_meta.json"

__all__ = ["DIGITS_META", "DIGITS_ONNX", "DIGITS_SPEC", "path"]


def path(name: str) -> pathlib.Path:
    """Return the filesystem path of the bundled example file ``name`` (e.g. ``DIGITS_ONNX``)."""
    p = pathlib.Path(str(files("veracity.examples").joinpath(name)))
    if not p.is_file():
        raise FileNotFoundError(f"no bundled example file named {name!r} (looked at {p})")
    return p
