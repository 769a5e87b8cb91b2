"""Image datasets read straight from their standard files: MNIST idx, CIFAR-10 python pickles, sklearn digits.

Every loader returns ``(images, labels)``: float32 ``(N, C, H, W)`` pixels in [0, 1] and int64 labels.
Nothing is downloaded; a missing file is a :class:`FileNotFoundError` that names it.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
_MNIST_FILES = {"train": "train-{}-idx{}-ubyte", "test": "t10k-{}-idx{}-ubyte"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory / stem}(.gz) not found")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array of its dtype and shape (only unsigned bytes)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} bytes")
    return data.reshape(shape)


def load_mnist(data_dir, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """MNIST from ``data_dir`` holding the four standard idx files (gzipped or not): (N, 1, 28, 28)."""
    _check_split(split)
    d = Path(data_dir)
    x = read_idx(_find(d, _MNIST_FILES[split].format("images", 3)))
    y = read_idx(_find(d, _MNIST_FILES[split].format("labels", 1)))
    return (x.astype(np.float32) / 255.0)[:, None], y.astype(np.int64)


def load_cifar10(data_dir, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from ``data_dir`` (the ``cifar-10-batches-py`` folder or its parent): (N, 3, 32, 32)."""
    _check_split(split)
    d = Path(data_dir)
    if (d / "cifar-10-batches-py").is_dir():
        d = d / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for name in names:
        path = d / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], np.int64))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def load_digits(split: str = "test", test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, pixels / 16, with a seeded train/test split: (N, 1, 8, 8)."""
    _check_split(split)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    idx = order[:n_test] if split == "test" else order[n_test:]
    return x[idx], y[idx]


def load(name: str, data_dir=None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``name`` in digits|mnist|cifar10; ``data_dir`` is needed for mnist and cifar10."""
    if name == "digits":
        return load_digits(split)
    if name not in ("mnist", "cifar10"):
        raise ValueError(f"unknown dataset {name!r}; choose from digits, mnist, cifar10")
    if data_dir is None:
        raise ValueError(f"{name} needs a data directory")
    return (load_mnist if name == "mnist" else load_cifar10)(data_dir, split)
