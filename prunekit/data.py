"""Datasets and mini-batches: the real data every notebook trains on.

Three small real datasets ship with the repository in ``data/`` (see
``data/README.md`` for provenance, licences and checksums), so a fresh clone
needs no download:

* :func:`load_digits`        -- 1,797 handwritten digits, 8x8 pixels, 10 classes (UCI).
* :func:`load_diabetes`      -- 442 patients, 10 features, a real-valued target (Efron et al. 2004).
* :func:`load_fashion_mnist` -- 70,000 clothing images, 28x28 pixels, 10 classes (Xiao et al. 2017).

Every loader returns ``(x_train, y_train), (x_test, y_test)`` as NumPy arrays:
float32 features and int64 class labels (float32 targets for diabetes).

:class:`DataLoader` cuts a dataset (arrays ``x`` and ``y``, or any object with
``__len__`` and ``__getitem__(i) -> (x_i, y_i)``, as in PyTorch) into mini-batches,
optionally shuffled with a seed, which is all a training loop needs.

Every data file is checked against a SHA-256 before its contents are used; a
missing, truncated or altered file raises an error that names the file. No
file is ever unpickled.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunekit._validate import check_array, check_int, check_number, fail

__all__ = [
    "load_digits",
    "load_diabetes",
    "load_fashion_mnist",
    "read_idx",
    "DataLoader",
    "ArrayDataset",
    "train_val_split",
    "subset",
    "data_dirs",
    "FASHION_MNIST_CLASSES",
    "DataFileError",
    "ChecksumError",
    "DataNotFoundError",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
"""Names of the ten Fashion-MNIST classes; label ``k`` is ``FASHION_MNIST_CLASSES[k]``."""


class DataFileError(ValueError):
    """A data file exists but cannot be used: truncated, corrupt or of the wrong format."""


class ChecksumError(DataFileError):
    """A data file's contents do not have the SHA-256 we expect."""


class DataNotFoundError(FileNotFoundError):
    """A data file is in none of the searched folders and could not be downloaded."""


# --------------------------------------------------------------------------- files

@dataclass(frozen=True)
class _DataFile:
    """One gzip-compressed data file we know.

    ``sha256`` and ``size`` describe the *decompressed* contents. We check the
    contents rather than the .gz bytes because the same data travel in different
    gzip containers: Debian's package recompressed the official Fashion-MNIST
    files, so their .gz bytes (and hashes) differ while the data are identical.
    """

    folder: str  # sub-folder of a data directory, e.g. "fashion-mnist"
    name: str  # file name, e.g. "train-images-idx3-ubyte.gz"
    sha256: str
    size: int
    urls: tuple[str, ...] = ()  # base URLs to download from, tried in order


_FASHION_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_SKLEARN_URLS = (
    "https://raw.githubusercontent.com/scikit-learn/scikit-learn/1.5.2/sklearn/datasets/data/",
)

_FILES = {
    f.name: f
    for f in [
        _DataFile("fashion-mnist", "train-images-idx3-ubyte.gz",
                  "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016, _FASHION_URLS),
        _DataFile("fashion-mnist", "train-labels-idx1-ubyte.gz",
                  "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008, _FASHION_URLS),
        _DataFile("fashion-mnist", "t10k-images-idx3-ubyte.gz",
                  "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016, _FASHION_URLS),
        _DataFile("fashion-mnist", "t10k-labels-idx1-ubyte.gz",
                  "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008, _FASHION_URLS),
        _DataFile("digits", "digits.csv.gz",
                  "6ebb3d2fee246a4e99363262ddf8a00a3c41bee6014c373ed9d9216ba7f651b8", 264712, _SKLEARN_URLS),
        _DataFile("diabetes", "diabetes_data_raw.csv.gz",
                  "86badf50b4f9436ddd1e497dc0ae1b93166f8120221ee7dca4634fe849f3be7c", 19596, _SKLEARN_URLS),
        _DataFile("diabetes", "diabetes_target.csv.gz",
                  "244713a551f62a291a354212d8a048adec6cb1244b2bc44e66a0698f5006d26d", 11050, _SKLEARN_URLS),
    ]
}

_REPO_DATA = Path(__file__).resolve().parents[1] / "data"
_SYSTEM_DATA = Path("/usr/share/datasets")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "prunekit"


def data_dirs() -> list[Path]:
    """The folders searched for data files, in order.

    1. ``$PRUNEKIT_DATA`` (if set),
    2. the repository's ``data/`` folder,
    3. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` package installs there),
    4. the user cache ``$XDG_CACHE_HOME/prunekit`` (default ``~/.cache/prunekit``),
       where downloads go.

    A file ``NAME`` of dataset ``FOLDER`` is looked for as ``DIR/FOLDER/NAME``,
    then as ``DIR/NAME``.
    """
    dirs = []
    if os.environ.get("PRUNEKIT_DATA"):
        dirs.append(Path(os.environ["PRUNEKIT_DATA"]).expanduser())
    dirs += [_REPO_DATA, _SYSTEM_DATA, _cache_dir()]
    return dirs


def _locate(f: _DataFile, download: bool) -> Path:
    """Return the path of the first copy of ``f`` found; download it if there is none."""
    searched = []
    for d in data_dirs():
        for path in (d / f.folder / f.name, d / f.name):
            searched.append(str(path))
            if path.is_file():
                return path
    if download and f.urls:
        return _download(f, _cache_dir() / f.folder / f.name)
    raise DataNotFoundError(
        f"Could not find the data file {f.name!r}. Looked in:\n  " + "\n  ".join(searched)
        + f"\nPut the file in one of these places (or set PRUNEKIT_DATA to a folder holding "
        f"{f.folder}/{f.name})" + (", or allow the download." if f.urls else ".")
    )


def _download(f: _DataFile, dest: Path) -> Path:
    """Download ``f`` to ``dest`` atomically: write a temporary file, check it, rename it."""
    import urllib.request

    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in f.urls:
        url = base + f.name
        fd, tmp = tempfile.mkstemp(prefix=f.name + ".", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=f"Downloading {f.name}") as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            _verified_contents(Path(tmp), f)  # raises if the download is not the file we know
            os.replace(tmp, dest)  # atomic: other processes see no file or the whole file
            return dest
        except (OSError, DataFileError) as exc:  # urllib's URLError is an OSError
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataNotFoundError(
        f"Could not download {f.name!r}:\n  " + "\n  ".join(errors)
        + f"\nDownload it by hand into {dest.parent} or into a folder named by PRUNEKIT_DATA."
    )


def _verified_contents(path: Path, f: _DataFile) -> bytes:
    """Decompress ``path`` and return its bytes, after checking their size and SHA-256."""
    try:
        with gzip.open(path, "rb") as fh:
            contents = fh.read(f.size + 1)  # never more than one byte beyond what we expect
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataFileError(
            f"The data file {path} is not a complete gzip file ({exc}). "
            "It may be truncated or corrupt: delete it and get it again."
        ) from None
    if len(contents) != f.size:
        raise DataFileError(
            f"The data file {path} decompresses to {len(contents)}{'+' if len(contents) > f.size else ''} "
            f"bytes; {f.name} has {f.size}. Delete it and get it again."
        )
    digest = hashlib.sha256(contents).hexdigest()
    if digest != f.sha256:
        raise ChecksumError(
            f"The data file {path} is not the {f.name} we know: the SHA-256 of its contents is "
            f"{digest}, expected {f.sha256}. Delete it and get it again."
        )
    return contents


def _file_key(name: str, download: bool) -> tuple:
    """(path, size, mtime) of the copy of ``name`` in use: the cache key of its parsed contents."""
    path = _locate(_FILES[name], download)
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


# --------------------------------------------------------------------------- IDX

# IDX type codes (http://yann.lecun.com/exdb/mnist/, bottom of the page); data are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _parse_idx(buf: bytes, where: str, expected_shape: tuple | None = None) -> np.ndarray:
    """Parse IDX bytes into a read-only array (a view of ``buf`` for 1-byte types).

    Layout: 2 zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the data in C order.
    """
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        magic = buf[:4].hex() if len(buf) >= 4 else f"only {len(buf)} bytes"
        raise DataFileError(
            f"{where} is not an IDX file: its magic number is {magic}, "
            f"expected 0000TTDD (TT a type code in {sorted(hex(k) for k in _IDX_DTYPES)}, DD >= 1 dimensions)."
        )
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFileError(f"{where}: the IDX header announces {ndim} dimensions but the file ends after {len(buf)} bytes.")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    n_bytes = math.prod(shape) * dtype.itemsize
    if len(buf) - header != n_bytes:
        raise DataFileError(
            f"{where}: the IDX header says shape {shape} ({n_bytes} bytes of data), "
            f"but the file holds {len(buf) - header} bytes of data."
        )
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise DataFileError(f"{where}: the IDX header says shape {shape}, expected {tuple(expected_shape)}.")
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    if dtype.byteorder == ">":
        arr = arr.astype(dtype.newbyteorder("="))
        arr.flags.writeable = False
    return arr


def read_idx(path, *, expected_shape=None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a new array.

    The header is checked against the file size (and against ``expected_shape``
    if given); a mismatch raises :class:`DataFileError` naming the file.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic number
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFileError(f"{path} is not a complete gzip file ({exc}).") from None
    return np.array(_parse_idx(raw, str(path), expected_shape))


@functools.lru_cache(maxsize=8)
def _idx_array(key: tuple, name: str, shape: tuple) -> np.ndarray:
    """Checked, parsed contents of one IDX file; cached so each file is hashed once per process."""
    contents = _verified_contents(Path(key[0]), _FILES[name])
    return _parse_idx(contents, key[0], shape)


@functools.lru_cache(maxsize=8)
def _csv_array(key: tuple, name: str, n_columns: int, delimiter) -> np.ndarray:
    """Checked, parsed contents of one numeric text table, read-only and cached."""
    contents = _verified_contents(Path(key[0]), _FILES[name])
    table = np.loadtxt(io.StringIO(contents.decode("ascii")), delimiter=delimiter, ndmin=2)
    if table.shape[1] != n_columns:
        raise DataFileError(f"{key[0]}: expected {n_columns} columns, found {table.shape[1]}.")
    table.flags.writeable = False
    return table


# --------------------------------------------------------------------------- splits

def _check_fraction(name, value):
    return check_number(name, value, 0, 1, closed="()")


def _check_seed(seed):
    if seed is not None and not isinstance(seed, np.random.Generator):
        check_int("seed", seed, low=0)
    return seed


def _split_indices(n, fraction, seed, labels=None, name="test_fraction"):
    """Indices (train, test) with round(fraction * n) test samples, drawn with ``seed``.

    With ``labels`` the split is stratified: each class gives the same fraction
    of its samples to the test set (rounded per class).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        groups = [np.arange(n)]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    train, test = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        k = int(round(fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    train, test = np.concatenate(train), np.concatenate(test)
    if len(train) == 0 or len(test) == 0:
        fail(name, f"a fraction that leaves samples on both sides of a split of {n} samples",
             fraction)
    # shuffle so that a stratified split does not come out sorted by class
    return rng.permutation(train), rng.permutation(test)


def _check_xy(x, y):
    check_array("x", x)
    check_array("y", y)
    if x.ndim == 0 or len(x) == 0:
        fail("x", "an array with at least one sample (axis 0)", f"shape {x.shape}")
    if y.ndim == 0 or len(y) != len(x):
        fail("y", f"an array with as many samples as x ({len(x)})", f"shape {y.shape}")


def train_val_split(x, y, val_fraction=0.2, *, seed=0, stratify=False):
    """Split ``(x, y)`` at random into ``(x_train, y_train), (x_val, y_val)``.

    ``round(val_fraction * len(x))`` samples go to the validation set. With
    ``stratify=True`` (integer class labels ``y``) every class is split in the
    same proportion. The same ``seed`` gives the same split.
    """
    _check_xy(x, y)
    _check_fraction("val_fraction", val_fraction)
    _check_seed(seed)
    if not isinstance(stratify, bool):
        fail("stratify", "a bool", stratify, TypeError)
    if stratify and y.dtype.kind not in "iub":
        fail("y", "integer class labels when stratify=True", str(y.dtype), TypeError)
    train, val = _split_indices(len(x), val_fraction, seed, y if stratify else None, "val_fraction")
    return (x[train], y[train]), (x[val], y[val])


def subset(x, y, n, *, seed=0):
    """A random subset of ``n`` distinct samples of ``(x, y)``, for quick experiments."""
    _check_xy(x, y)
    check_int("n", n, low=1, high=len(x))
    _check_seed(seed)
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[idx], y[idx]


# --------------------------------------------------------------------------- loaders

def load_digits(*, test_fraction=0.2, seed=0, flatten=True):
    """The UCI handwritten digits: 1,797 images of 8x8 pixels, labels 0-9.

    Pixels (integers 0..16 in the file) are scaled to float32 in [0, 1]. The
    split is stratified by class and drawn with ``seed``.

    Returns ``(x_train, y_train), (x_test, y_test)``; ``x`` has shape (N, 64),
    or (N, 1, 8, 8) with ``flatten=False``; ``y`` is int64.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_seed(seed)
    table = _csv_array(_file_key("digits.csv.gz", True), "digits.csv.gz", 65, ",")
    x = np.divide(table[:, :64], 16.0, dtype=np.float32)
    y = table[:, 64].astype(np.int64)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    train, test = _split_indices(len(y), test_fraction, seed, labels=y)
    return (x[train], y[train]), (x[test], y[test])


DIABETES_FEATURES = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
"""Names of the ten diabetes features (s1..s6 are blood serum measurements)."""


def load_diabetes(*, test_fraction=0.2, seed=0, standardize=True):
    """The diabetes regression data of Efron et al. (2004), "Least Angle Regression".

    442 patients, 10 baseline features (:data:`DIABETES_FEATURES`), target: a
    measure of disease progression one year later (25..346). With
    ``standardize=True`` each feature is shifted and scaled by the mean and
    standard deviation of the *training* split, so no test information leaks in.
    The split is random, drawn with ``seed``.

    Returns ``(x_train, y_train), (x_test, y_test)``: float32 features (N, 10),
    float32 targets (N,) in the original units.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_seed(seed)
    if not isinstance(standardize, bool):
        fail("standardize", "a bool", standardize, TypeError)
    x = _csv_array(_file_key("diabetes_data_raw.csv.gz", True), "diabetes_data_raw.csv.gz", 10, None)
    y = _csv_array(_file_key("diabetes_target.csv.gz", True), "diabetes_target.csv.gz", 1, None)[:, 0]
    if len(x) != len(y):
        raise DataFileError(f"diabetes: {len(x)} rows of features but {len(y)} targets.")
    train, test = _split_indices(len(y), test_fraction, seed)
    x_train, x_test = x[train], x[test]
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    f32 = np.float32
    return (x_train.astype(f32), y[train].astype(f32)), (x_test.astype(f32), y[test].astype(f32))


def load_fashion_mnist(*, flatten=True, download=True):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 + 10,000 clothing images, 28x28.

    Files are looked for in :func:`data_dirs` (the repository ships them) and,
    if absent and ``download=True``, downloaded from the Fashion-MNIST project
    into the user cache. Each file's contents are checked against a SHA-256
    before use, once per process; the parsed data are then kept in memory, so
    later calls are fast and each returns fresh arrays the caller owns.

    Returns ``(x_train, y_train), (x_test, y_test)``: float32 pixels in [0, 1]
    with shape (N, 784), or (N, 1, 28, 28) with ``flatten=False``; int64 labels
    0..9 (names in :data:`FASHION_MNIST_CLASSES`).
    """
    if not isinstance(flatten, bool):
        fail("flatten", "a bool", flatten, TypeError)
    if not isinstance(download, bool):
        fail("download", "a bool", download, TypeError)

    def part(split, n):
        images = _idx_array(_file_key(f"{split}-images-idx3-ubyte.gz", download),
                            f"{split}-images-idx3-ubyte.gz", (n, 28, 28))
        labels = _idx_array(_file_key(f"{split}-labels-idx1-ubyte.gz", download),
                            f"{split}-labels-idx1-ubyte.gz", (n,))
        x = np.divide(images, np.float32(255), dtype=np.float32)  # one pass, one new array
        x = x.reshape(n, 784) if flatten else x.reshape(n, 1, 28, 28)
        return x, labels.astype(np.int64)

    return part("train", 60000), part("t10k", 10000)


# --------------------------------------------------------------------------- batches

class DataLoader:
    """Iterate over a dataset in mini-batches ``(xb, yb)`` of ``batch_size`` samples.

    Two ways to give the samples:

    * ``DataLoader(x, y, 64)``: two arrays with one sample per row (axis 0);
    * ``DataLoader(dataset, batch_size=64)``, as in PyTorch: any object with
      ``__len__`` and ``__getitem__(i) -> (x_i, y_i)`` (a list of pairs will do).
      Each batch fetches its items and stacks them, ``xb = np.stack([x_i, ...])``
      and ``yb = np.asarray([y_i, ...])`` (PyTorch's default collation), so a dataset
      that builds its samples on the fly (say, with random augmentation) does so
      again every epoch. ``DataLoader(dataset, 64)`` also works, as in PyTorch.

    ``batch_size`` defaults to 1, as in PyTorch. One pass (``for xb, yb in loader``)
    is one epoch and yields ``len(loader)`` batches: ``ceil(N / batch_size)``, or
    ``floor(N / batch_size)`` with ``drop_last=True`` (the last, smaller batch is
    then skipped).

    With ``shuffle=True`` each epoch visits the samples in a new random order,
    drawn from ``np.random.default_rng(seed)`` made once here: the same seed gives
    the same sequence of epochs, whichever way the samples were given. ``seed`` may
    also be a ``numpy.random.Generator``. Without shuffling, array batches are views
    of ``x`` and ``y`` in their order.
    """

    def __init__(self, x, y=None, batch_size=None, *, shuffle=False, seed=None, drop_last=False):
        if y is not None and not isinstance(y, np.ndarray) and _is_dataset(x) and not isinstance(x, np.ndarray):
            if batch_size is not None:  # DataLoader(dataset, 64, 32): two batch sizes
                fail("batch_size", "given once (DataLoader(dataset, batch_size) takes no y)", batch_size, TypeError)
            y, batch_size = None, y  # PyTorch's DataLoader(dataset, 64)
        batch_size = 1 if batch_size is None else batch_size
        if y is None:
            _check_dataset(x)
            self.dataset = x
        else:
            self.dataset = ArrayDataset(x, y)
        check_int("batch_size", batch_size, low=1)
        if not isinstance(shuffle, bool):
            fail("shuffle", "a bool", shuffle, TypeError)
        if not isinstance(drop_last, bool):
            fail("drop_last", "a bool", drop_last, TypeError)
        _check_seed(seed)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    @property
    def n_samples(self):
        """Number of samples in the dataset (``len(loader.dataset)``)."""
        return len(self.dataset)

    def __len__(self):
        n, b = self.n_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = self.n_samples, self.batch_size
        order = self.rng.permutation(n) if self.shuffle else None
        arrays = self.dataset if isinstance(self.dataset, ArrayDataset) else None
        for start in range(0, len(self) * b, b):
            idx = slice(start, start + b) if order is None else order[start:start + b]
            if arrays is not None:  # arrays are cut with one slice or fancy index, not item by item
                yield arrays.x[idx], arrays.y[idx]
            else:
                items = range(n)[idx] if order is None else idx
                yield _collate([self.dataset[int(i)] for i in items])

    def __repr__(self):
        what = "" if isinstance(self.dataset, ArrayDataset) else f"dataset={type(self.dataset).__name__}, "
        return (f"DataLoader({what}n_samples={self.n_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, batches={len(self)})")


class ArrayDataset:
    """Arrays ``x`` and ``y`` seen as a dataset: item ``i`` is ``(x[i], y[i])`` (torch's TensorDataset).

    ``DataLoader(x, y, 64)`` wraps its arrays in one (``loader.dataset``); batches of it are
    cut from the arrays directly, without going item by item.
    """

    def __init__(self, x, y):
        _check_xy(x, y)
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __repr__(self):
        return f"ArrayDataset(x shape {self.x.shape}, y shape {self.y.shape})"


def _is_dataset(obj):
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, (str, bytes, dict))


def _check_dataset(dataset):
    """A dataset must have samples, and its items must be ``(x, y)`` pairs (the first is looked at)."""
    if isinstance(dataset, np.ndarray):
        fail("y", "an array of targets when x is an array (or pass a dataset whose items are (x, y) pairs)",
             None, TypeError)
    if not _is_dataset(dataset):
        fail("dataset", "an object with __len__ and __getitem__(i) -> (x, y), or arrays x and y",
             type(dataset).__name__, TypeError)
    if len(dataset) == 0:
        fail("dataset", "non-empty (at least one sample)", "an empty dataset")
    _check_item(dataset[0], 0)


def _check_item(item, i):
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        fail("dataset", "a dataset whose items are (x, y) pairs",
             f"item {i} of type {type(item).__name__}", TypeError)


def _collate(items):
    """A list of ``(x_i, y_i)`` pairs -> the batch ``(np.stack(xs), np.asarray(ys))``."""
    for i, item in enumerate(items):
        _check_item(item, i)
    return np.stack([np.asarray(it[0]) for it in items]), np.asarray([it[1] for it in items])
