from pathlib import Path

import numpy as np
import pytest

from veracity import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "mnist").exists(), reason="needs ../shared/data/mnist")
def test_mnist_test_split_reads_ten_thousand_images():
    x, y = data.load("mnist", SHARED / "mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and y.shape == (10000,)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))
    assert y[:3].tolist() == [7, 2, 1]  # the well-known first test labels


@pytest.mark.skipif(not (SHARED / "cifar10").exists(), reason="needs ../shared/data/cifar10")
def test_cifar_test_split():
    x, y = data.load("cifar10", SHARED / "cifar10", "test")
    assert x.shape == (10000, 3, 32, 32) and y.shape == (10000,) and 0.0 <= x.min() <= x.max() <= 1.0


def test_digits_splits_are_disjoint_and_cover_the_set():
    xtr, ytr = data.load("digits", split="train")
    xte, yte = data.load("digits", split="test")
    assert xtr.shape[1:] == (1, 8, 8) and len(ytr) + len(yte) == 1797 and xte.max() <= 1.0


def test_missing_and_malformed_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        data.load_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x01")
    with pytest.raises(ValueError, match="header says"):
        data.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="needs a data directory"):
        data.load("mnist")
