"""Shift families computed from the images themselves: ``shift(x, theta)`` for a batch and one theta per image.

Images are float tensors ``(N, C, H, W)`` in [0, 1] (MNIST background is 0); every shift returns the same
shape, clipped to [0, 1]. Each family has a parameter range ``[low, high]`` from which training draws theta
uniformly, and an ``identity`` value for which the shift returns ``x`` (up to float rounding).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _per_image(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device).reshape(-1)
    if theta.numel() == 1:
        theta = theta.expand(x.shape[0])
    if theta.numel() != x.shape[0]:
        raise ValueError(f"{theta.numel()} shift parameters for {x.shape[0]} images")
    return theta


def brightness(x: torch.Tensor, theta) -> torch.Tensor:
    """Add ``theta`` to every pixel."""
    t = _per_image(theta, x).view(-1, 1, 1, 1)
    return (x + t).clamp(0.0, 1.0)


def contrast(x: torch.Tensor, theta) -> torch.Tensor:
    """Scale the distance of each pixel from the image mean by ``theta``."""
    t = _per_image(theta, x).view(-1, 1, 1, 1)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (m + t * (x - m)).clamp(0.0, 1.0)


def _affine(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(mats, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0.0, 1.0)


def rotation(x: torch.Tensor, theta) -> torch.Tensor:
    """Rotate about the image centre by ``theta`` degrees (clockwise as displayed), bilinear, zero fill."""
    a = _per_image(theta, x) * (math.pi / 180.0)
    c, s = torch.cos(a), torch.sin(a)
    z = torch.zeros_like(a)
    mats = torch.stack([torch.stack([c, s, z], 1), torch.stack([-s, c, z], 1)], 1)
    return _affine(x, mats)


def shear(x: torch.Tensor, theta) -> torch.Tensor:
    """Horizontal shear about the centre row: a pixel at height h moves by ``theta * h`` sideways."""
    t = _per_image(theta, x)
    o, z = torch.ones_like(t), torch.zeros_like(t)
    mats = torch.stack([torch.stack([o, t, z], 1), torch.stack([z, o, z], 1)], 1)
    return _affine(x, mats)


def blur(x: torch.Tensor, theta) -> torch.Tensor:
    """Gaussian blur with standard deviation ``theta`` pixels (0: none), separable, zero padding."""
    s = _per_image(theta, x)
    if torch.any(s < 0):
        raise ValueError("blur needs theta >= 0")
    n, c, h, w = x.shape
    r = max(1, int(math.ceil(3.0 * float(s.max()))))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    sig = s.clamp_min(1e-6).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / sig) ** 2)
    k = k * (t.abs().view(1, -1) <= torch.ceil(3.0 * s).clamp_min(1).view(-1, 1))  # each image its own radius
    k = k / k.sum(1, keepdim=True)
    k = torch.where((s < 1e-3).view(-1, 1), (t == 0).to(x.dtype).expand_as(k), k)  # exact identity at 0
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), padding=(0, r), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), padding=(r, 0), groups=n * c)
    return y.reshape(n, c, h, w).clamp(0.0, 1.0)


HAZE_LIGHT = 0.7  # the brightness of the haze (atmospheric light)


def haze(x: torch.Tensor, theta) -> torch.Tensor:
    """Uniform haze (fog): blend each pixel towards the haze light ``HAZE_LIGHT`` with weight ``theta``."""
    t = _per_image(theta, x).view(-1, 1, 1, 1)
    return ((1.0 - t) * x + t * HAZE_LIGHT).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Shift:
    """A shift family: ``fn(x, theta)``, its parameter range and identity value."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    low: float
    high: float
    identity: float
    unit: str = ""

    def __call__(self, x: torch.Tensor, theta) -> torch.Tensor:
        return self.fn(x, theta)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        """``n`` parameters drawn uniformly from ``[low, high]``."""
        return self.low + (self.high - self.low) * torch.rand(n, generator=generator, dtype=dtype)

    def describe(self) -> str:
        return f"{self.name}: theta in [{self.low:g}, {self.high:g}]{self.unit}, identity {self.identity:g}"


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("brightness", brightness, -0.3, 0.3, 0.0, " (added to each pixel)"),
        Shift("contrast", contrast, 0.4, 1.6, 1.0, " (factor about the image mean)"),
        Shift("rotation", rotation, -30.0, 30.0, 0.0, " degrees"),
        Shift("shear", shear, -0.4, 0.4, 0.0, " (horizontal shear factor)"),
        Shift("blur", blur, 0.0, 1.5, 0.0, " (Gaussian sigma, pixels)"),
        Shift("haze", haze, 0.0, 0.5, 0.0, f" (blend weight towards {HAZE_LIGHT})"),
    )
}


def get(name: str) -> Shift:
    """The shift family called ``name``; a ValueError lists the known ones."""
    try:
        return SHIFTS[name]
    except KeyError:
        raise ValueError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}") from None


def random_shift(x: torch.Tensor, names: list[str], generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image shifted by one family drawn from ``names`` with a random parameter."""
    fams = [get(n) for n in names]
    pick = torch.randint(len(fams), (x.shape[0],), generator=generator)
    out = x.clone()
    for i, f in enumerate(fams):
        m = pick == i
        if m.any():
            out[m] = f(x[m], f.sample(int(m.sum()), generator, x.dtype))
    return out
