"""Input sets and output properties, from VNN-LIB files or built in Python."""

from veracity.spec.core import (
    Box,
    Case,
    Region,
    Spec,
    box,
    linf_ball,
    output_constraint,
    robustness_regions,
    robustness_spec,
)
from veracity.spec.vnnlib import VnnlibError, load_vnnlib, parse_vnnlib

__all__ = [
    "Box",
    "Case",
    "Region",
    "Spec",
    "VnnlibError",
    "box",
    "linf_ball",
    "load_vnnlib",
    "output_constraint",
    "parse_vnnlib",
    "robustness_regions",
    "robustness_spec",
]
