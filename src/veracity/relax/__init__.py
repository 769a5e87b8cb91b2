"""Relaxations of nonlinear functions: linear lower/upper lines valid on a given interval.

Every function here is pure: it takes pre-activation bounds ``l <= z <= u`` (tensors of any shape) and
returns :class:`LinearBounds` with ``lw*z + lb <= f(z) <= uw*z + ub`` for every z in [l, u].
``lines`` picks the default lines (``"tight"`` or ``"adaptive"``, see :func:`leaky_relu`); ``alpha``
(optional, values in [0, 1]) moves the optimisable line within its sound family, which is what
α-CROWN optimises.
"""

from veracity.relax.lines import LinearBounds
from veracity.relax.paramramp import paramramp
from veracity.relax.relu import leaky_relu, relu
from veracity.relax.s_shaped import sigmoid, tanh

__all__ = ["LinearBounds", "leaky_relu", "paramramp", "relu", "sigmoid", "tanh"]
