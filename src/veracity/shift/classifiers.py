"""Small MNIST classifiers to certify against shifts, trained normally or with shift augmentation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from veracity.shift.families import random_shift

ARCHS = ("mlp", "conv")


def make(arch: str, image_shape=(1, 28, 28), n_classes: int = 10) -> nn.Sequential:
    """``mlp``: 784-32-32-10 ReLU; ``conv``: two 4x4 convolutions (stride 2, padding 1; 8, 16 channels), 32, 10."""
    c, h, w = image_shape
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                             nn.Linear(32, n_classes))
    if arch == "conv":
        h2, w2 = h // 4, w // 4  # each convolution halves an even side
        return nn.Sequential(nn.Conv2d(c, 8, 4, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * h2 * w2, 32), nn.ReLU(), nn.Linear(32, n_classes))
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, augment: list[str] = (), epochs: int = 2,
          batch: int = 128, lr: float = 1e-3, seed: int = 0, share: float = 0.5, progress=None) -> list[float]:
    """Adam on cross-entropy; with ``augment``, a ``share`` of each batch is shifted by a random family and theta.

    ``progress(step, total, loss)`` is called after each step when given.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = (len(x_all) + batch - 1) // batch
    total = per_epoch * epochs
    losses: list[float] = []
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x, y = x_all[idx], y_all[idx]
            if augment:
                m = torch.rand(len(x), generator=gen) < share
                if m.any():
                    x = x.clone()
                    x[m] = random_shift(x[m], list(augment), gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress is not None:
                progress(step, total, losses[-1])
    model.eval()
    return losses


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, shift: str | None = None,
             seed: int = 3) -> float:
    """Test accuracy, on clean images or on images shifted by ``shift`` with random theta."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if shift is not None:
        x = random_shift(x, [shift], torch.Generator().manual_seed(seed))
    pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred.numpy() == np.asarray(labels)).mean())


def export_onnx(model: nn.Module, path: Path, image_shape=(1, 28, 28)) -> None:
    """Plain ONNX (opset 13, batch 1): input ``input`` (1, C, H, W), output ``logits``."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it gives plain graphs
        torch.onnx.export(model, (torch.zeros(1, *image_shape),), str(path), input_names=["input"],
                          output_names=["logits"], opset_version=13, do_constant_folding=True, dynamo=False)
