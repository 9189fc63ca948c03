"""Tests of prunekit.data: the shipped datasets, their checks, splits and mini-batches.

References are independent of the loader: the raw files are re-read here with
gzip + NumPy, and the published facts of each dataset (sizes, class counts,
official content MD5s) are written out.
"""
import dataclasses
import gzip
import hashlib
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prunekit import data
from prunekit.data import (
    ChecksumError,
    DataFileError,
    DataLoader,
    DataNotFoundError,
    load_diabetes,
    load_digits,
    load_fashion_mnist,
    read_idx,
    subset,
    train_val_split,
)

DATA = Path(__file__).resolve().parents[1] / "data"
FASHION = DATA / "fashion-mnist"


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    """Tests start from the default search path, whatever the caller's environment."""
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)


def _raw(path):
    return gzip.decompress(Path(path).read_bytes())


# ---------------------------------------------------------------- shipped files

def test_checksum_table_in_data_readme_matches_the_files():
    rows = re.findall(r"\| `([\w./-]+\.gz)` \| ([\d,]+) \| `([0-9a-f]{64})` \| ([\d,]+) \| `([0-9a-f]{64})` \|",
                      (DATA / "README.md").read_text())
    shipped = sorted(str(p.relative_to(DATA)) for p in DATA.glob("*/*.gz"))
    assert sorted(r[0] for r in rows) == shipped and len(shipped) == 7
    for name, size, sha, raw_size, raw_sha in rows:
        blob = (DATA / name).read_bytes()
        assert len(blob) == int(size.replace(",", ""))
        assert hashlib.sha256(blob).hexdigest() == sha
        raw = gzip.decompress(blob)
        assert len(raw) == int(raw_size.replace(",", ""))
        assert hashlib.sha256(raw).hexdigest() == raw_sha
        # the loader verifies against the same numbers
        f = data._FILES[Path(name).name]
        assert (f.sha256, f.size) == (raw_sha, len(raw))


def test_fashion_mnist_contents_are_the_official_ones():
    # MD5s of the official decompressed files, as published by Fashion-MNIST loaders
    official = {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    }
    for name, md5 in official.items():
        assert hashlib.md5(_raw(FASHION / name)).hexdigest() == md5


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist()


def test_fashion_mnist_shapes_dtypes_ranges(fashion):
    (x, y), (xt, yt) = fashion
    assert x.shape == (60000, 784) and xt.shape == (10000, 784)
    assert x.dtype == np.float32 and y.dtype == np.int64 and yt.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(yt), [1000] * 10)
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_pixels_match_an_independent_read(fashion):
    (x, y), (xt, yt) = fashion
    images = np.frombuffer(_raw(FASHION / "t10k-images-idx3-ubyte.gz"), np.uint8, offset=16)
    labels = np.frombuffer(_raw(FASHION / "t10k-labels-idx1-ubyte.gz"), np.uint8, offset=8)
    np.testing.assert_array_equal(np.rint(xt * 255).astype(np.uint8).ravel(), images)
    np.testing.assert_array_equal(yt, labels)
    first = np.frombuffer(_raw(FASHION / "train-images-idx3-ubyte.gz")[16:16 + 784], np.uint8)
    np.testing.assert_allclose(x[0], first / 255.0, rtol=1e-6)


def test_fashion_mnist_unflattened(fashion):
    (x4, y4), (xt4, _) = load_fashion_mnist(flatten=False)
    assert x4.shape == (60000, 1, 28, 28) and xt4.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(x4.reshape(60000, -1), fashion[0][0])
    np.testing.assert_array_equal(y4, fashion[0][1])


def test_fashion_mnist_repeat_calls_are_cached_and_return_fresh_arrays(fashion, monkeypatch):
    (x, y), _ = load_fashion_mnist()
    x[:] = -1.0  # the caller owns what it gets: scribbling must not reach the cache
    y[:] = 99
    calls = []
    monkeypatch.setattr(data, "_verified_contents", lambda *a: calls.append(a))
    (x2, y2), _ = load_fashion_mnist()
    assert calls == []  # no file was read or hashed again
    np.testing.assert_array_equal(x2, fashion[0][0])
    np.testing.assert_array_equal(y2, fashion[0][1])


def _fashion_copy(tmp_path, name, contents=None):
    """A data dir in tmp_path holding fashion-mnist/name (optionally with other contents)."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if contents is None:
        shutil.copy(FASHION / name, target)
    else:
        target.write_bytes(contents)
    return target


def test_altered_file_fails_its_checksum(tmp_path, monkeypatch):
    raw = bytearray(_raw(FASHION / "train-labels-idx1-ubyte.gz"))
    raw[100] = (raw[100] + 1) % 10  # one label changed: a valid file of the right size
    path = _fashion_copy(tmp_path, "train-labels-idx1-ubyte.gz", gzip.compress(bytes(raw)))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(ChecksumError, match="SHA-256") as err:
        load_fashion_mnist()
    assert str(path) in str(err.value)
    with pytest.raises(ChecksumError):  # errors are not cached: it fails every time
        load_fashion_mnist()


def test_truncated_gzip_is_a_clear_error(tmp_path, monkeypatch):
    blob = (FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = _fashion_copy(tmp_path, "t10k-labels-idx1-ubyte.gz", blob[: len(blob) // 2])
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(DataFileError, match="not a complete gzip file") as err:
        load_fashion_mnist()
    assert str(path) in str(err.value)


def test_corrupt_byte_in_gzip_is_a_clear_error(tmp_path, monkeypatch):
    blob = bytearray((FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path = _fashion_copy(tmp_path, "t10k-labels-idx1-ubyte.gz", bytes(blob))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(DataFileError) as err:
        load_fashion_mnist()
    assert str(path) in str(err.value)


def test_wrong_size_contents_are_a_clear_error(tmp_path, monkeypatch):
    raw = _raw(FASHION / "t10k-labels-idx1-ubyte.gz")
    path = _fashion_copy(tmp_path, "t10k-labels-idx1-ubyte.gz", gzip.compress(raw + b"\x00"))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    with pytest.raises(DataFileError, match="10008") as err:
        load_fashion_mnist()
    assert str(path) in str(err.value)


def test_prunekit_data_is_searched_first_and_may_hold_files_directly(tmp_path, monkeypatch):
    shutil.copy(FASHION / "t10k-labels-idx1-ubyte.gz", tmp_path)
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path))
    found = data._locate(data._FILES["t10k-labels-idx1-ubyte.gz"], download=False)
    assert found == tmp_path / "t10k-labels-idx1-ubyte.gz"
    assert data.data_dirs()[0] == tmp_path


# ---------------------------------------------------------------- download

@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """Hide every local copy; the cache is an empty folder in tmp_path."""
    monkeypatch.setattr(data, "_REPO_DATA", tmp_path / "no-repo-data")
    monkeypatch.setattr(data, "_SYSTEM_DATA", tmp_path / "no-system-data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prunekit" / "fashion-mnist"


def _with_mirrors(monkeypatch, name, *mirrors):
    f = dataclasses.replace(data._FILES[name], urls=tuple(m.as_uri() + "/" for m in mirrors))
    monkeypatch.setitem(data._FILES, name, f)
    return f


def test_download_goes_to_the_cache_atomically_after_its_check(tmp_path, monkeypatch, no_local_data):
    name = "t10k-labels-idx1-ubyte.gz"
    bad, good = tmp_path / "bad-mirror", tmp_path / "good-mirror"
    bad.mkdir(), good.mkdir()
    (bad / name).write_bytes(gzip.compress(b"\x00" * 10008))  # right size, wrong contents
    shutil.copy(FASHION / name, good / name)
    f = _with_mirrors(monkeypatch, name, bad, good)
    path = data._locate(f, download=True)
    assert path == no_local_data / name
    assert path.read_bytes() == (FASHION / name).read_bytes()
    assert sorted(p.name for p in no_local_data.iterdir()) == [name]  # no .part file left


def test_failed_download_leaves_nothing_and_names_every_url(tmp_path, monkeypatch, no_local_data):
    name = "t10k-labels-idx1-ubyte.gz"
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / name).write_bytes(b"not gzip at all")
    f = _with_mirrors(monkeypatch, name, bad, tmp_path / "missing-mirror")
    with pytest.raises(DataNotFoundError) as err:
        data._locate(f, download=True)
    assert str(err.value).count(name) >= 2 and "missing-mirror" in str(err.value)
    assert list(no_local_data.iterdir()) == []


def test_missing_file_without_download_lists_the_places_searched(no_local_data):
    with pytest.raises(DataNotFoundError, match="PRUNEKIT_DATA") as err:
        load_fashion_mnist(download=False)
    assert "no-repo-data" in str(err.value) and "no-system-data" in str(err.value)


# ---------------------------------------------------------------- IDX reader

def _idx(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_read_idx_reads_bytes_and_big_endian_ints(tmp_path):
    p = tmp_path / "a.idx"
    p.write_bytes(_idx(0x08, (2, 3), bytes(range(6))))
    np.testing.assert_array_equal(read_idx(p), np.arange(6, dtype=np.uint8).reshape(2, 3))
    q = tmp_path / "b.idx.gz"
    values = np.array([1, -2, 70000], dtype=">i4")
    q.write_bytes(gzip.compress(_idx(0x0C, (3,), values.tobytes())))
    out = read_idx(q, expected_shape=(3,))
    np.testing.assert_array_equal(out, [1, -2, 70000])
    assert out.dtype == np.int32 and out.flags.writeable


@pytest.mark.parametrize(
    "blob, message",
    [
        (_idx(0x08, (3, 2), bytes(5)), r"shape \(3, 2\) \(6 bytes of data\), but the file holds 5"),
        (_idx(0x08, (3, 2), bytes(7)), "holds 7 bytes"),
        (b"\x00\x00\x07\x01" + bytes(8), "not an IDX file"),  # unknown type code
        (b"\x1f\x00\x08\x01" + bytes(8), "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "ends after 6 bytes"),
        (b"\x00\x00", "not an IDX file"),
    ],
)
def test_read_idx_rejects_bad_headers_naming_the_file(tmp_path, blob, message):
    p = tmp_path / "bad.idx"
    p.write_bytes(blob)
    with pytest.raises(DataFileError, match=message) as err:
        read_idx(p)
    assert str(p) in str(err.value)


def test_read_idx_checks_the_expected_shape(tmp_path):
    p = tmp_path / "labels.idx"
    p.write_bytes(_idx(0x08, (6,), bytes(6)))
    with pytest.raises(DataFileError, match=r"expected \(60000,\)"):
        read_idx(p, expected_shape=(60000,))


# ---------------------------------------------------------------- digits

def _digits_table():
    return np.loadtxt(gzip.open(DATA / "digits" / "digits.csv.gz", "rt"), delimiter=",")


def test_digits_shapes_ranges_and_stratified_split():
    (x, y), (xt, yt) = load_digits()
    assert x.shape == (1438, 64) and xt.shape == (359, 64)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() == 1.0
    np.testing.assert_array_equal(np.unique(x * 16), np.arange(17))  # pixel counts 0..16, scaled
    class_counts = np.array([178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # UCI optdigits.tes
    np.testing.assert_array_equal(np.bincount(y) + np.bincount(yt), class_counts)
    np.testing.assert_array_equal(np.bincount(yt), np.round(0.2 * class_counts))


def test_digits_split_is_a_partition_of_the_file():
    (x, y), (xt, yt) = load_digits(test_fraction=0.3, seed=5)
    table = _digits_table()
    ours = np.column_stack([np.vstack([x, xt]) * 16, np.concatenate([y, yt])])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], table[np.lexsort(table.T)])


def test_digits_seed_reproducible_and_unflattened():
    (a, ya), _ = load_digits(seed=1)
    (b, yb), _ = load_digits(seed=1)
    (c, _), _ = load_digits(seed=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)
    (img, _), (img_t, _) = load_digits(seed=1, flatten=False)
    assert img.shape == (1438, 1, 8, 8) and img_t.shape == (359, 1, 8, 8)
    np.testing.assert_array_equal(img.reshape(len(img), 64), a)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan")])
def test_digits_rejects_bad_test_fraction(bad):
    with pytest.raises(ValueError, match="test_fraction must be"):
        load_digits(test_fraction=bad)


# ---------------------------------------------------------------- diabetes

def test_diabetes_is_standardised_with_training_statistics():
    (x, y), (xt, yt) = load_diabetes()
    assert x.shape == (354, 10) and xt.shape == (88, 10) and y.shape == (354,)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1, atol=1e-5)
    raw = np.loadtxt(gzip.open(DATA / "diabetes" / "diabetes_data_raw.csv.gz", "rt"))
    target = np.loadtxt(gzip.open(DATA / "diabetes" / "diabetes_target.csv.gz", "rt"))
    (rx, ry), (rxt, ryt) = load_diabetes(standardize=False)
    np.testing.assert_array_equal(ry, y)
    mean, std = rx.astype(np.float64).mean(0), rx.astype(np.float64).std(0)
    np.testing.assert_allclose(xt, (rxt - mean) / std, rtol=1e-4, atol=1e-4)
    # the split is a partition of the 442 patients; first patient of Efron et al.'s table
    rows = np.column_stack([np.vstack([rx, rxt]), np.concatenate([ry, ryt])]).astype(np.float64)
    ref = np.column_stack([raw, target])
    np.testing.assert_allclose(rows[np.lexsort(rows.T)], ref[np.lexsort(ref.T)], rtol=1e-6)
    np.testing.assert_allclose(ref[0], [59, 2, 32.1, 101, 157, 93.2, 38, 4, 4.8598, 87, 151])
    assert ry.min() == 25 and max(ry.max(), ryt.max()) == 346


# ---------------------------------------------------------------- DataLoader

@given(n=st.integers(1, 120), batch_size=st.integers(1, 50), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dataloader_covers_every_sample_once_per_epoch(n, batch_size, shuffle, drop_last, seed):
    y = np.arange(n)
    x = np.stack([y * 2.0, y * 3.0], axis=1)
    loader = DataLoader(x, y, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    # the same samples given as a dataset of (x_i, y_i) pairs, as PyTorch takes them
    as_dataset = DataLoader(list(zip(x, y)), batch_size=batch_size, shuffle=shuffle, seed=seed,
                            drop_last=drop_last)
    assert len(as_dataset) == len(loader) and as_dataset.n_samples == n
    for _epoch in range(2):
        batches = list(loader)
        for (xa, ya), (xb, yb) in zip(list(as_dataset), batches, strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        assert len(batches) == len(loader)
        seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], int)
        for xb, yb in batches:
            np.testing.assert_array_equal(xb, np.stack([yb * 2.0, yb * 3.0], axis=1))  # x, y aligned
            assert len(xb) <= batch_size
        if drop_last:
            assert len(loader) == n // batch_size
            assert all(len(yb) == batch_size for _, yb in batches)
            assert len(np.unique(seen)) == len(seen) == (n // batch_size) * batch_size
        else:
            assert len(loader) == -(-n // batch_size)
            np.testing.assert_array_equal(np.sort(seen), y)
        if not shuffle:
            np.testing.assert_array_equal(seen, y[: len(seen)])


def test_dataloader_shuffle_is_reproducible_and_new_every_epoch():
    y = np.arange(100)
    x = y.reshape(100, 1).astype(np.float32)

    def epochs(seed):
        loader = DataLoader(x, y, 32, shuffle=True, seed=seed)
        return [np.concatenate([yb for _, yb in loader]) for _ in range(3)]

    a, b, c = epochs(7), epochs(7), epochs(8)
    for ea, eb in zip(a, b):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], y)


def test_dataloader_accepts_a_generator():
    y = np.arange(50)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    l1 = DataLoader(y, y, 10, shuffle=True, seed=g1)
    l2 = DataLoader(y, y, 10, shuffle=True, seed=g2)
    np.testing.assert_array_equal(np.concatenate([b for _, b in l1]), np.concatenate([b for _, b in l2]))


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=-3), ValueError, "batch_size"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(batch_size=4, shuffle="yes"), TypeError, "shuffle"),
        (dict(batch_size=4, drop_last=1), TypeError, "drop_last"),
        (dict(batch_size=4, seed=-1), ValueError, "seed"),
        (dict(batch_size=4, seed=1.5), TypeError, "seed"),
    ],
)
def test_dataloader_rejects_bad_arguments(kwargs, exc, name):
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(exc, match=f"{name} must be"):
        DataLoader(x, y, **kwargs)


def test_dataloader_rejects_bad_data():
    with pytest.raises(ValueError, match="y must be an array with as many samples as x"):
        DataLoader(np.zeros((10, 2)), np.zeros(9), 4)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        DataLoader([[0.0, 1.0]], np.zeros(1), 4)
    with pytest.raises(ValueError, match="at least one sample"):
        DataLoader(np.zeros((0, 2)), np.zeros(0), 4)


# ---------------------------------------------------------------- splits

@given(n=st.integers(2, 200), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_train_val_split_is_a_partition(n, fraction, seed):
    y = np.arange(n)
    x = y[:, None] * 1.5
    k = int(round(fraction * n))
    if k in (0, n):
        with pytest.raises(ValueError, match="val_fraction must be"):
            train_val_split(x, y, fraction, seed=seed)
        return
    (xa, ya), (xb, yb) = train_val_split(x, y, fraction, seed=seed)
    assert len(yb) == k
    np.testing.assert_array_equal(np.sort(np.concatenate([ya, yb])), y)
    np.testing.assert_array_equal(xa[:, 0], ya * 1.5)
    (_, ya2), (_, yb2) = train_val_split(x, y, fraction, seed=seed)
    np.testing.assert_array_equal(yb, yb2)


def test_train_val_split_stratified_keeps_class_proportions():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    x = np.arange(100)[:, None]
    (_, ya), (_, yb) = train_val_split(x, y, 0.3, seed=1, stratify=True)
    np.testing.assert_array_equal(np.bincount(yb), [3, 6, 9, 12])
    np.testing.assert_array_equal(np.bincount(ya), [7, 14, 21, 28])
    with pytest.raises(TypeError, match="y must be"):
        train_val_split(x, y.astype(float), 0.3, stratify=True)


def test_subset_draws_distinct_aligned_samples():
    y = np.arange(30)
    x = y[:, None] * 2
    xs, ys = subset(x, y, 10, seed=4)
    assert len(np.unique(ys)) == 10
    np.testing.assert_array_equal(xs[:, 0], ys * 2)
    np.testing.assert_array_equal(subset(x, y, 10, seed=4)[1], ys)
    with pytest.raises(ValueError, match="n must be"):
        subset(x, y, 31)


# ---------------------------------------------------------------- import hygiene

def test_importing_prunekit_data_pulls_in_only_numpy():
    code = ("import sys, prunekit.data; "
            "print(sorted(m for m in ('matplotlib', 'numba', 'tqdm', 'scipy', 'torch', 'urllib.request') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
