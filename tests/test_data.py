"""Data sets: on-disk loaders on tiny files in the real formats, splits, normalisation, augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill_core.config import DataConfig
from distill_core.data import DATASETS, Splits, batches, crop_flip, crop_flip_draws, load_data
from distill_core.errors import DataError

FASHION_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
CIFAR10_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


# --- writers for the real on-disk formats -------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """MNIST's IDX format: magic 0x0000 08 <ndim> (uint8), big-endian int32 dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def indexed_images(n: int, size: int, channels: int, start: int) -> np.ndarray:
    """uint8 images with random pixels, except pixel [0, 0, 0] = the image's index (to trace rows)."""
    rng = np.random.default_rng(start)
    images = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(start, start + n)
    return images


def write_fashion(
    root: Path, *, gz: bool, n_train: int = 60, n_test: int = 20
) -> dict[str, np.ndarray]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": indexed_images(n_train, 28, 1, 0)[:, 0],
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": indexed_images(n_test, 28, 1, 100)[:, 0],
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        if gz:
            with gzip.open(raw / (name + ".gz"), "wb") as f:
                f.write(idx_bytes(array))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return arrays


def write_cifar(
    root: Path, *, classes: int, n_per_file: int = 12
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR's python pickles: {b'data': uint8 N x 3072 (R, G, B planes), b'labels' or b'fine_labels': list}."""
    if classes == 10:
        folder, files, key = root / "cifar-10-batches-py", CIFAR10_FILES, b"labels"
    else:
        folder, files, key = root / "cifar-100-python", ["train", "test"], b"fine_labels"
    folder.mkdir(parents=True)
    written, start = {}, 0
    for i, name in enumerate(files):
        n = n_per_file * (5 if classes == 100 and name == "train" else 1)
        images = indexed_images(n, 32, 3, start)
        start += n
        labels = [int(v) for v in (np.arange(n) * 7 + i) % classes]
        batch = {b"batch_label": name.encode(), b"data": images.reshape(n, 3072), key: labels}
        if classes == 100:
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (images, labels)
    return written


def channel_stats(train_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (unbiased) std of uint8 images scaled to [0, 1], shaped (1, C, 1, 1)."""
    x = train_images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), ddof=1, keepdims=True)


def fitted_stats(x: torch.Tensor, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel (mean, std) with ``x * std + mean == raw / 255``, fitted on images we wrote."""
    fits = [
        np.polyfit(x[:, c].double().numpy().ravel(), raw[:, c].ravel() / 255.0, 1)
        for c in range(raw.shape[1])
    ]
    std, mean = np.array(fits).T
    return mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)


def indices_of(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Recover the traced index from pixel [0, 0, 0] of normalised images."""
    pixel = x[:, 0, 0, 0].double().numpy() * std[0, 0, 0, 0] + mean[0, 0, 0, 0]
    return np.rint(pixel * 255).astype(int)


# --- fashion_mnist ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion(tmp_path, gz=gz)
    data = load_data(DataConfig(name="fashion_mnist", dir=str(tmp_path), val_fraction=0.25))
    train_images = arrays["train-images-idx3-ubyte"][:, None]
    assert data.train_x.shape == (45, 1, 28, 28) and data.val_x.shape == (15, 1, 28, 28)
    assert data.test_x.shape == (20, 1, 28, 28)
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (10, 1, 28, False)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.long
    # test images are normalised with the statistics of the training split (not train + val)
    test_images = arrays["t10k-images-idx3-ubyte"][:, None]
    stats = fitted_stats(data.test_x, test_images)
    mean, std = channel_stats(train_images[indices_of(data.train_x, *stats)])
    np.testing.assert_allclose(stats, (mean, std), rtol=1e-5)
    np.testing.assert_allclose(data.test_x.numpy(), (test_images / 255.0 - mean) / std, atol=1e-4)
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # every train/val row is a training image with its own label, and no image is in both
    seen = []
    for x, y in ((data.train_x, data.train_y), (data.val_x, data.val_y)):
        idx = indices_of(x, mean, std)
        seen += idx.tolist()
        assert y.tolist() == arrays["train-labels-idx1-ubyte"][idx].tolist()
        np.testing.assert_allclose(x.numpy(), (train_images[idx] / 255.0 - mean) / std, atol=1e-4)
    assert sorted(seen) == list(range(60))


def test_fashion_mnist_training_split_is_standardised(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    data = load_data(DataConfig(name="fashion_mnist", dir=str(tmp_path), val_fraction=0.0))
    assert data.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data.train_x.std().item() == pytest.approx(1.0, abs=1e-4)
    assert len(data.val_y) == 0 and len(data.train_y) == 60


@pytest.mark.parametrize("missing", FASHION_FILES)
def test_fashion_mnist_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    write_fashion(tmp_path, gz=False)
    (tmp_path / "FashionMNIST" / "raw" / missing).unlink()
    with pytest.raises(
        DataError, match=f"missing .*{missing}.*FashionMNIST\\(root=DIR, download=True\\)"
    ):
        load_data(DataConfig(name="fashion_mnist", dir=str(tmp_path)))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_fashion_mnist_truncated_file_is_a_data_error(tmp_path: Path, gz: bool) -> None:
    write_fashion(tmp_path, gz=gz)
    path = tmp_path / "FashionMNIST" / "raw" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_data(DataConfig(name="fashion_mnist", dir=str(tmp_path)))


def test_fashion_mnist_wrong_magic_is_a_data_error(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=False)
    raw = tmp_path / "FashionMNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"<html>not found</html>" * 4)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_data(DataConfig(name="fashion_mnist", dir=str(tmp_path)))


# --- cifar --------------------------------------------------------------------------------------


def test_cifar10_reads_pickled_batches(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, classes=10)
    data = load_data(DataConfig(name="cifar10", dir=str(tmp_path), val_fraction=0.0))
    train_images = np.concatenate([written[f][0] for f in CIFAR10_FILES[:5]])
    train_labels = sum((written[f][1] for f in CIFAR10_FILES[:5]), [])
    assert data.train_x.shape == (60, 3, 32, 32) and data.test_x.shape == (12, 3, 32, 32)
    assert (data.num_classes, data.in_channels, data.image_size, data.augment) == (10, 3, 32, True)
    mean, std = channel_stats(train_images)
    # rows are R, G, B planes of 32x32: de-normalising gives back exactly what was written
    np.testing.assert_allclose(
        data.test_x.numpy(), (written["test_batch"][0] / 255.0 - mean) / std, atol=1e-4
    )
    assert data.test_y.tolist() == written["test_batch"][1]
    assert sorted(data.train_y.tolist()) == sorted(train_labels)
    idx = indices_of(data.train_x, mean, std)  # batches 1..5 hold images 0..59 in order
    assert sorted(idx.tolist()) == list(range(60))
    np.testing.assert_allclose(
        data.train_x.numpy(), (train_images[idx] / 255.0 - mean) / std, atol=1e-4
    )
    assert data.train_y.tolist() == [train_labels[i] for i in idx]
    per_channel = data.train_x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_channel, torch.zeros(3), atol=1e-5, rtol=0)


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, classes=100, n_per_file=30)
    data = load_data(DataConfig(name="cifar100", dir=str(tmp_path), val_fraction=0.1))
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (135, 15, 30)
    assert data.test_y.tolist() == written["test"][1]
    assert data.num_classes == 100  # label 99 occurs: (i * 7) % 100 hits every class over 150 rows
    assert sorted(data.train_y.tolist() + data.val_y.tolist()) == sorted(written["train"][1])


@pytest.mark.parametrize("missing", ["data_batch_3", "test_batch"])
def test_cifar10_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    write_cifar(tmp_path, classes=10)
    (tmp_path / "cifar-10-batches-py" / missing).unlink()
    with pytest.raises(
        DataError, match=f"cifar10: missing .*{missing};.*CIFAR10\\(root=DIR, download=True\\)"
    ):
        load_data(DataConfig(name="cifar10", dir=str(tmp_path)))


def test_cifar10_gzipped_batch_is_not_taken_for_the_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path, classes=10)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_2").rename(folder / "data_batch_2.gz")
    with pytest.raises(DataError, match="missing .*data_batch_2;"):
        load_data(DataConfig(name="cifar10", dir=str(tmp_path)))


def test_cifar10_corrupted_pickle_is_a_data_error(tmp_path: Path) -> None:
    write_cifar(tmp_path, classes=10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_4 is not a CIFAR pickle"):
        load_data(DataConfig(name="cifar10", dir=str(tmp_path)))


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("fashion_mnist", "FashionMNIST"),
    ],
)
def test_missing_directory_is_named(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError, match=f"{name}: data directory .*{folder}.* does not exist"):
        load_data(DataConfig(name=name, dir=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion_mnist"])
def test_on_disk_sets_need_a_data_dir(name: str) -> None:
    with pytest.raises(DataError, match="--data-dir DIR"):
        load_data(DataConfig(name=name))


# --- embedded sets and splits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "n_total"),
    [("digits", (1, 8, 8), 1797), ("synthetic", (1, 8, 8), 800), ("mnist5k", (1, 28, 28), 5000)],
)
def test_embedded_sets(name: str, shape: tuple[int, ...], n_total: int) -> None:
    data = load_data(DataConfig(name=name))
    n_test = int(0.2 * n_total)
    n_val = round(0.1 * (n_total - n_test))
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (
        n_total - n_test - n_val,
        n_val,
        n_test,
    )
    assert tuple(data.train_x.shape[1:]) == shape and data.num_classes == 10
    assert set(data.train_y.tolist()) == set(range(10))
    assert not data.augment


def test_registered_data_sets() -> None:
    assert set(DATASETS.names()) == {
        "mnist5k",
        "digits",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "synthetic",
    }


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_data_set_is_declared_once_with_what_the_lists_need(name: str) -> None:
    spec = DATASETS.get(name)
    assert spec.name == name and spec.description
    assert spec.classes >= 2 and len(spec.shape) == 3
    assert spec.augment == (name in {"cifar10", "cifar100"})
    assert spec.embedded == (name in {"mnist5k", "digits", "synthetic"})
    if spec.embedded:
        data = load_data(DataConfig(name=name))
        assert (data.num_classes, tuple(data.train_x.shape[1:])) == (spec.classes, spec.shape)
        assert data.augment == spec.augment


def test_the_declared_class_count_is_used_even_when_top_classes_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = DATASETS.get("synthetic")

    def first_classes(cfg: DataConfig) -> tuple[np.ndarray, ...]:
        x, y, tx, ty = real.load(cfg)
        return x[y < 5], y[y < 5], tx[ty < 5], ty[ty < 5]

    monkeypatch.setitem(DATASETS._items, "synthetic", replace(real, load=first_classes))
    data = load_data(DataConfig(name="synthetic"))
    assert data.num_classes == 10 and int(data.train_y.max()) == 4


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda x, y: (x[:, :, :4], y), r"images of shape \(1, 4, 8\), expected \(1, 8, 8\)"),
        (lambda x, y: (x, y + 5), "labels outside 0..9"),
    ],
)
def test_a_loader_that_disagrees_with_its_declaration_is_a_data_error(
    monkeypatch: pytest.MonkeyPatch, damage: Any, message: str
) -> None:
    real = DATASETS.get("synthetic")

    def damaged(cfg: DataConfig) -> tuple[np.ndarray, ...]:
        x, y, tx, ty = real.load(cfg)
        return (*damage(x, y), tx, ty)

    monkeypatch.setitem(DATASETS._items, "synthetic", replace(real, load=damaged))
    with pytest.raises(DataError, match=message):
        load_data(DataConfig(name="synthetic"))


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def split_ids(data: Splits, raw_test: np.ndarray) -> tuple[set[int], set[int]]:
    stats = fitted_stats(data.test_x, raw_test)
    return set(indices_of(data.train_x, *stats).tolist()), set(
        indices_of(data.val_x, *stats).tolist()
    )


def test_split_is_seeded_disjoint_and_carved_from_train(tmp_path: Path) -> None:
    arrays = write_fashion(tmp_path, gz=False, n_train=200)
    raw_test = arrays["t10k-images-idx3-ubyte"][:, None]
    cfg = DataConfig(name="fashion_mnist", dir=str(tmp_path), val_fraction=0.2)
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    train_ids, val_ids = split_ids(a, raw_test)
    assert (len(train_ids), len(val_ids)) == (160, 40)
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(200))
    other = load_data(cfg.model_copy(update={"split_seed": 1}))
    other_train, other_val = split_ids(other, raw_test)
    assert (
        other_val != val_ids and len(other_val) == 40 and other_train | other_val == set(range(200))
    )
    assert torch.equal(other.test_y, a.test_y)  # the test set never moves


def test_val_fraction_and_subset() -> None:
    full = load_data(DataConfig(name="synthetic", val_fraction=0.25))
    assert (len(full.train_y), len(full.val_y), len(full.test_y)) == (480, 160, 160)
    assert rows(full.val_x).isdisjoint(rows(full.train_x))
    small = load_data(DataConfig(name="synthetic", val_fraction=0.25, subset=50))
    assert len(small.train_y) == 50
    assert torch.equal(small.train_y, full.train_y[:50]) and torch.equal(small.val_y, full.val_y)
    # normalised with the subset's own statistics
    assert small.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)


def test_splits_move_to_a_device() -> None:
    data = load_data(DataConfig(name="synthetic")).to("cpu")
    assert data.train_x.device.type == "cpu"


# --- batching and augmentation ------------------------------------------------------------------


def test_batches_cover_every_example_once() -> None:
    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    y = torch.arange(10)
    plain = list(batches(x, y, 4))
    assert [len(b.y) for b in plain] == [4, 4, 2]
    assert torch.cat([b.y for b in plain]).tolist() == list(range(10))
    shuffled = torch.cat(
        [b.y for b in batches(x, y, 4, generator=torch.Generator().manual_seed(0))]
    )
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    again = torch.cat([b.y for b in batches(x, y, 4, generator=torch.Generator().manual_seed(0))])
    assert torch.equal(shuffled, again)
    for xb, yb, index in batches(x, y, 3, generator=torch.Generator().manual_seed(1)):
        assert torch.equal(xb.flatten().long(), yb)  # images stay with their labels
        assert torch.equal(index, yb)  # ... and the index names their rows


def test_augmented_batches_carry_the_rows_they_were_cropped_from() -> None:
    x, y = images(n=10, c=1, size=4) + 1, torch.arange(10)
    for xb, yb, index in batches(x, y, 4, generator=torch.Generator().manual_seed(2), augment=True):
        assert torch.equal(index, yb)
        for crop, row in zip(xb, x[index], strict=True):
            assert set(crop[crop != 0].tolist()) <= set(row.flatten().tolist())


def images(n: int = 6, c: int = 3, size: int = 8) -> torch.Tensor:
    return torch.arange(n * c * size * size, dtype=torch.float32).reshape(n, c, size, size)


def random_crop_flip(x: torch.Tensor, *, pad: int, seed: int) -> torch.Tensor:
    draws = crop_flip_draws(len(x), pad=pad, generator=torch.Generator().manual_seed(seed))
    return crop_flip(x, draws, pad=pad)


def test_crop_flip_draws_are_offsets_in_range_and_flips() -> None:
    draws = crop_flip_draws(1000, pad=2, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (3, 1000)
    assert set(draws[0].tolist()) == set(draws[1].tolist()) == {0, 1, 2, 3, 4}
    assert set(draws[2].tolist()) == {0, 1} and 400 < draws[2].sum() < 600


def test_crop_flip_at_known_draws() -> None:
    x = images(n=2, c=1, size=4)
    # image 0: shifted up and left; image 1: centred and flipped
    draws = torch.tensor([[0, 2], [1, 2], [0, 1]])
    out = crop_flip(x, draws, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:5])
    assert torch.equal(out[1], x[1].flip(-1))


def test_crop_flip_keeps_shape_and_is_deterministic_given_a_generator() -> None:
    x = images()
    a = random_crop_flip(x, pad=4, seed=3)
    b = random_crop_flip(x, pad=4, seed=3)
    c = random_crop_flip(x, pad=4, seed=4)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_crop_flip_with_no_padding_only_flips() -> None:
    x = images(n=32)
    out = random_crop_flip(x, pad=0, seed=0)
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 0 < sum(flipped) < 32


def test_crop_flip_is_a_window_of_the_zero_padded_image() -> None:
    x = images(n=16, c=2, size=6) + 1  # no zeros inside the image
    pad = 2
    out = random_crop_flip(x, pad=pad, seed=1)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for o, p in zip(out, padded, strict=True):
        windows = [
            p[:, r : r + 6, c : c + 6].flip(-1) if flip else p[:, r : r + 6, c : c + 6]
            for r in range(2 * pad + 1)
            for c in range(2 * pad + 1)
            for flip in (False, True)
        ]
        assert any(torch.equal(o, w) for w in windows)
    assert (out == 0).any()  # some crops reach into the padding


def test_augment_only_when_shuffling() -> None:
    x, y = images(n=4), torch.arange(4)
    ((xb, _, _),) = batches(x, y, 4, augment=True)
    assert torch.equal(xb, x)  # evaluation batches (no generator) are never augmented
    ((xa, ya, _),) = batches(x, y, 4, generator=torch.Generator().manual_seed(0), augment=True)
    assert xa.shape == x.shape and not torch.equal(xa, x[ya])
