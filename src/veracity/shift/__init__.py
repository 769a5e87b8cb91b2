"""Distribution shifts learned by a conditional VAE, and latent-box specs for certifying classifiers against them.

- :mod:`veracity.shift.families`: shifts computed from the images (brightness, contrast, rotation, shear,
  blur, haze), ``shift(x, theta)``;
- :mod:`veracity.shift.cvae`: prior p(z|x), encoder q(z|x, x'), decoder G(x, z) (sigmoid output), training,
  ONNX export, picture grid;
- :mod:`veracity.shift.classifiers`: small MNIST classifiers, trained normally or with shift augmentation;
- :mod:`veracity.shift.compose`: the per-image network z -> classifier(G(x, z)) built from ONNX files;
- :mod:`veracity.shift.latent`: latent boxes, VNN-LIB, writing, checking and verifying instances.
"""

from veracity.shift.families import SHIFTS, Shift, get

__all__ = ["SHIFTS", "Shift", "get"]
