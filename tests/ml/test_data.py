"""Loading CIFAR-10 from each on-disk form, the decode cache, and stratified seeded splits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ml import sources
from ml.config import DataConfig
from ml.data import DataError, Dataset, load_dataset, make_splits
from tests.synthetic import make_dataset, write_cifar_batches, write_image_folder, write_tar_gz


def _assert_same(got: Dataset, expected: Dataset) -> None:
    assert got.classes == expected.classes
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name
    assert got.train_x.dtype == np.uint8 and got.train_x.shape[1:] == (32, 32, 3)


def test_image_folder_at_the_top_of_data_dir(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path, n_train_per_class=4, n_test_per_class=2)
    _assert_same(load_dataset("cifar10", tmp_path, download=False), expected)


def test_image_folder_under_cifar10(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "cifar10", n_train_per_class=3, n_test_per_class=1)
    _assert_same(load_dataset("cifar10", tmp_path, download=False), expected)


def test_tar_gz_of_jpegs_with_a_leading_folder(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected = write_image_folder(tree, n_train_per_class=4, n_test_per_class=2, fmt="jpg")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_tar_gz(tree, data_dir / "cifar10-jpeg.tar.gz", prefix="cifar10-jpeg/")
    got = load_dataset("cifar10", data_dir, download=False)
    assert got.classes == expected.classes
    assert np.array_equal(got.train_y, expected.train_y) and np.array_equal(got.test_y, expected.test_y)
    # JPEG is lossy: the pixels are close to the originals, not equal; and equal to the folder's decode.
    assert np.abs(got.train_x.astype(int) - expected.train_x).mean() < 20
    _assert_same(got, load_dataset("cifar10", tree, download=False))


def test_torchvision_pickled_batches(tmp_path: Path) -> None:
    expected = write_cifar_batches(tmp_path, n_train_per_class=5, n_test_per_class=2)
    _assert_same(load_dataset("cifar10", tmp_path, download=False), expected)


def test_pickled_batches_may_not_name_arbitrary_code(tmp_path: Path) -> None:
    write_cifar_batches(tmp_path, n_train_per_class=1, n_test_per_class=1)
    # A pickle that would call os.system when loaded by an unrestricted unpickler.
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(DataError, match=r"unexpected object os\.system"):
        load_dataset("cifar10", tmp_path, download=False)


def test_second_load_reads_the_cache_not_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_image_folder(tmp_path, n_train_per_class=3, n_test_per_class=1)
    load_dataset("cifar10", tmp_path, download=False)
    (cache_file,) = (tmp_path / ".cache").glob("*.npz")

    def no_decoding(*args: object) -> np.ndarray:
        raise AssertionError("decoded an image although the cache is valid")

    monkeypatch.setattr(sources, "decode_image", no_decoding)
    got = load_dataset("cifar10", tmp_path, download=False)
    _assert_same(got, expected)
    assert got.source == str(cache_file)


def test_a_changed_source_is_decoded_again(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_train_per_class=3, n_test_per_class=1)
    first = load_dataset("cifar10", tmp_path, download=False)
    image = tmp_path / "train" / "cat" / "0000.png"
    shutil.copy(tmp_path / "train" / "dog" / "0000.png", image)
    os.utime(image, ns=(1, 1))  # a new mtime even on filesystems with coarse timestamps
    second = load_dataset("cifar10", tmp_path, download=False)
    assert second.source == str(tmp_path)  # decoded, not cached
    cat = first.classes.index("cat")
    assert not np.array_equal(
        first.train_x[first.train_y == cat][0], second.train_x[second.train_y == cat][0]
    )


def test_unwritable_data_dir_caches_in_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    expected = write_image_folder(data_dir, n_train_per_class=2, n_test_per_class=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    (data_dir / ".cache").write_text("a file where the cache folder would go")  # fails even for root
    load_dataset("cifar10", data_dir, download=False)
    (cache_file,) = (tmp_path / "user-cache" / "sweepserve").glob("*.npz")
    got = load_dataset("cifar10", data_dir, download=False)
    assert got.source == str(cache_file)
    _assert_same(got, expected)


def test_missing_data_names_the_directory_and_the_forms(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "cifar-10-batches-py" in message and "ImageFolder" in message and ".tar.gz" in message


def test_unknown_dataset_name() -> None:
    with pytest.raises(DataError, match="cifar100"):
        load_dataset("cifar100", Path("."), download=False)


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    bad = tmp_path / "train" / "ship" / "0001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=str(bad)):
        load_dataset("cifar10", tmp_path, download=False)


def test_wrong_image_size_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    write_image_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    Image.new("RGB", (64, 64)).save(tmp_path / "test" / "cat" / "0000.png")
    with pytest.raises(DataError, match="64x64, expected 32x32"):
        load_dataset("cifar10", tmp_path, download=False)


def test_test_classes_must_be_train_classes(tmp_path: Path) -> None:
    write_image_folder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    shutil.copytree(tmp_path / "test" / "cat", tmp_path / "test" / "unicorn")
    with pytest.raises(DataError, match="unicorn"):
        load_dataset("cifar10", tmp_path, download=False)


# --- splits --------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> set[bytes]:
    return {bytes(img.contiguous().numpy().tobytes()) for img in x}


def test_validation_is_stratified_disjoint_and_seeded() -> None:
    ds = make_dataset(20, 3, seed=0)
    splits = make_splits(ds, DataConfig(val_size=50), seed=7)
    assert splits.train_x.shape == (150, 3, 32, 32) and splits.val_x.shape == (50, 3, 32, 32)
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64
    assert torch.bincount(splits.val_y).tolist() == [5] * 10
    assert torch.bincount(splits.train_y).tolist() == [15] * 10
    assert not _rows(splits.train_x) & _rows(splits.val_x)
    assert _rows(splits.train_x) | _rows(splits.val_x) == _rows(
        torch.from_numpy(ds.train_x).permute(0, 3, 1, 2)
    )
    again = make_splits(ds, DataConfig(val_size=50), seed=7)
    assert torch.equal(again.val_x, splits.val_x) and torch.equal(again.train_x, splits.train_x)
    other = make_splits(ds, DataConfig(val_size=50), seed=8)
    assert not torch.equal(other.val_x, splits.val_x)
    assert torch.equal(splits.test_x, torch.from_numpy(ds.test_x).permute(0, 3, 1, 2))


def test_labels_stay_with_their_images() -> None:
    ds = make_dataset(4, 1, seed=0)
    splits = make_splits(ds, DataConfig(val_size=10), seed=0)
    label_of = {img.tobytes(): int(label) for img, label in zip(ds.train_x, ds.train_y, strict=True)}
    for x, y in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        for img, label in zip(x, y, strict=True):
            assert label_of[img.permute(1, 2, 0).contiguous().numpy().tobytes()] == int(label)


def test_uneven_classes_get_proportional_validation_counts() -> None:
    ds = make_dataset(10, 1, seed=0)
    keep = np.concatenate([np.flatnonzero(ds.train_y == c)[: 10 if c < 5 else 4] for c in range(10)])
    ds = Dataset(ds.train_x[keep], ds.train_y[keep], ds.test_x, ds.test_y, ds.classes)
    splits = make_splits(ds, DataConfig(val_size=14), seed=0)  # 20 % of 70: 2 per big class, 0.8 per small
    counts = torch.bincount(splits.val_y, minlength=10).tolist()
    assert counts[:5] == [2] * 5
    assert sorted(counts[5:]) == [0, 1, 1, 1, 1]  # the 4 left over go to the largest remainders


def test_train_limit_is_a_stratified_subset() -> None:
    ds = make_dataset(20, 1, seed=0)
    splits = make_splits(ds, DataConfig(val_size=20, train_limit=30), seed=0)
    assert torch.bincount(splits.train_y).tolist() == [3] * 10
    full = make_splits(ds, DataConfig(val_size=20), seed=0)
    assert torch.equal(full.val_x, splits.val_x)  # the limit does not change validation
    assert _rows(splits.train_x) <= _rows(full.train_x)
    unlimited = make_splits(ds, DataConfig(val_size=20, train_limit=10_000), seed=0)
    assert torch.equal(unlimited.train_x, full.train_x)


def test_val_size_too_large_is_a_data_error() -> None:
    ds = make_dataset(3, 1, seed=0)
    with pytest.raises(DataError, match="val_size 30 is too large"):
        make_splits(ds, DataConfig(val_size=30), seed=0)
    make_splits(ds, DataConfig(val_size=20), seed=0)  # two of three per class: allowed


def test_the_split_follows_split_seed_and_its_fingerprint_names_it() -> None:
    ds = make_dataset(20, 3, seed=0)
    splits = make_splits(ds, DataConfig(val_size=50, split_seed=3))
    again = make_splits(ds, DataConfig(val_size=50, split_seed=3, train_limit=60))
    other = make_splits(ds, DataConfig(val_size=50, split_seed=4))
    assert torch.equal(again.val_x, splits.val_x)  # train_limit draws from what validation leaves
    assert again.val_fingerprint == splits.val_fingerprint and len(splits.val_fingerprint) == 64
    assert not torch.equal(other.val_x, splits.val_x) and other.val_fingerprint != splits.val_fingerprint
