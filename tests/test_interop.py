"""What a PyTorch or NumPy user types, tried as a new user would (issue 9, part 4).

Expected values are computed by hand, or are what PyTorch documents for the same call
(torch is not a test dependency): ``argmax`` returns the first of tied maxima,
``int()`` truncates toward zero, ``tolist()`` of a 0-d tensor is a Python number,
``size()`` is the shape and ``size(d)`` one axis, ``DataLoader(dataset, batch_size)``
stacks ``(x_i, y_i)`` items into batches.
"""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest

import prunekit as pk
from prunekit import _glue
from prunekit.data import DataLoader
from prunekit.tensor import Tensor

T = Tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]])  # row 1 has a tie for its maximum (indices 0 and 2)


# ------------------------------------------------------------ NumPy's array protocol
def test_asarray_gives_the_float_data_without_a_copy():
    a = np.asarray(T)
    assert a.dtype == np.float32 and a.shape == (2, 3)
    assert a is T.data                                   # a view of the data, as .numpy() is
    assert np.asarray(T, copy=False) is T.data


def test_array_protocol_honours_dtype_and_numpy2_copy_keyword():
    c = np.array(T)                                      # np.array copies by default
    assert not np.shares_memory(c, T.data) and np.array_equal(c, T.data)
    c2 = np.asarray(T, copy=True)
    assert not np.shares_memory(c2, T.data)
    d = np.asarray(T, dtype=np.float64)
    assert d.dtype == np.float64 and d[1, 0] == 7.0
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(T, dtype=np.float64, copy=False)     # a dtype change needs a copy


def test_numpy_functions_read_a_tensor():
    assert np.argmax(T, 1).tolist() == [1, 0]            # 5 is the largest of row 0; 7 first in row 1
    assert np.argmax(T, axis=0).tolist() == [1, 0, 1]
    assert np.argmax(T) == 3                             # flat index of the first 7
    np.testing.assert_allclose(np.exp(Tensor([0.0, 1.0])), [1.0, 2.7182818], rtol=1e-6)
    np.testing.assert_array_equal(np.stack([Tensor([1.0, 2.0]), Tensor([3.0, 4.0])]), [[1, 2], [3, 4]])


def test_numpy_reductions_call_the_tensor_methods_and_keep_the_graph():
    # np.sum/np.mean/np.max call t.sum(axis=..., out=None[, dtype=None]), as they do for torch tensors.
    t = Tensor([[1.0, 2.0], [3.0, 6.0]], requires_grad=True)
    assert isinstance(np.sum(t), Tensor) and np.sum(t).item() == 12.0
    assert np.mean(t, axis=1).tolist() == [1.5, 4.5]
    assert np.max(t, 0, keepdims=True).tolist() == [[3.0, 6.0]]
    np.mean(t).backward()
    np.testing.assert_array_equal(t.grad, np.full((2, 2), 0.25))
    with pytest.raises(TypeError, match=r"Tensor.sum\(\): dtype must be None"):
        np.sum(t, dtype=np.float64)
    with pytest.raises(TypeError, match=r"Tensor.max\(\): out must be None"):
        np.max(t, out=np.zeros(()))


def test_ndarray_op_tensor_still_builds_a_tensor():
    # __array__ must not make NumPy swallow the Tensor: the reflected op keeps the graph.
    w = Tensor([1.0, 2.0], requires_grad=True)
    out = np.array([3.0, 4.0], np.float32) * w
    assert isinstance(out, Tensor) and out.requires_grad
    out.sum().backward()
    np.testing.assert_array_equal(w.grad, [3.0, 4.0])
    assert isinstance(np.float32(2) + w, Tensor)


# ------------------------------------------------------------ PyTorch's conveniences
def test_argmax_like_torch():
    assert T.argmax().item() == 3                        # torch: the index into the flattened tensor
    np.testing.assert_array_equal(T.argmax(1), [1, 0])   # torch: first of tied maxima
    np.testing.assert_array_equal(T.argmax(dim=0), [1, 0, 1])
    assert T.argmax(1, keepdim=True).shape == (2, 1)
    assert T.argmax(1).dtype == np.int64                 # torch.argmax gives int64 (a LongTensor)


def test_tolist_float_int_bool():
    assert T.tolist() == [[1.0, 5.0, 2.0], [7.0, 0.0, 7.0]]
    assert Tensor(1.5).tolist() == 1.5 and isinstance(Tensor(1.5).tolist(), float)
    assert float(Tensor(2.25)) == 2.25 and float(Tensor([[2.25]])) == 2.25   # any one-element shape
    assert int(Tensor(-2.7)) == -2 and int(Tensor([2.7])) == 2                # truncation toward zero
    assert bool(Tensor(0.5)) is True and bool(Tensor([0.0])) is False
    with pytest.raises(TypeError, match=r"float\(\): only a one-element Tensor .* shape \(2, 3\)"):
        float(T)
    with pytest.raises(TypeError, match=r"int\(\)"):
        int(T)
    with pytest.raises(ValueError, match=r"bool\(\)"):
        bool(T)                                          # ambiguous, as for arrays and torch tensors


def test_size_numel_dim():
    assert T.size() == (2, 3) and T.size(0) == 2 and T.size(-1) == 3   # torch
    assert T.size == 6 and T.size + 1 == 7                            # NumPy: a count
    assert T.numel() == 6 and T.dim() == 2 and Tensor(3.0).dim() == 0 and Tensor(3.0).size() == ()
    assert Tensor(np.zeros((4, 0))).numel() == 0
    size = copy.deepcopy(T.size)                                        # copies keep both faces
    assert size == 6 and size() == (2, 3) and json.dumps({"n": T.size}) == '{"n": 6}'
    assert np.zeros(T.size).shape == (6,) and np.int64(T.size) == 6


def test_detach_and_numpy():
    w = Tensor([1.0, 2.0], requires_grad=True)
    d = (w * 2).detach()
    assert not d.requires_grad and d._parents == () and d.tolist() == [2.0, 4.0]
    assert w.numpy() is w.data


# ------------------------------------------------------------ comparisons
def test_comparisons_give_boolean_arrays():
    t = Tensor([1.0, 2.0, 3.0])
    assert (t < 2).tolist() == [True, False, False]
    assert (t <= 2).tolist() == [True, True, False]
    assert (t > 2).tolist() == [False, False, True]
    assert (t >= 2).tolist() == [False, True, True]
    assert (t == 2).tolist() == [False, True, False]
    assert (t != 2).tolist() == [True, False, True]
    assert (t == Tensor([1.0, 0.0, 3.0])).tolist() == [True, False, True]
    assert (2 < t).tolist() == [False, False, True]                       # reflected: t > 2
    assert (np.array([3.0, 2.0, 1.0]) == t).tolist() == [False, True, False]
    assert (np.float32(2) >= t).tolist() == [True, True, False]
    assert isinstance(t > 2, np.ndarray) and (t > 2).dtype == bool


def test_comparisons_carry_no_gradient_and_index_a_tensor():
    x = Tensor([1.0, -2.0, 3.0], requires_grad=True)
    x[x > 0].sum().backward()                            # boolean-mask indexing, PyTorch style
    np.testing.assert_array_equal(x.grad, [1.0, 0.0, 1.0])


def test_comparison_with_an_unrelated_object_is_not_elementwise():
    t = Tensor([1.0, 2.0])
    assert (t == None) is False and (t != None) is True  # noqa: E711 (what `x == None` checks do)
    with pytest.raises(TypeError):
        t < "a"  # noqa: B015


def test_tensors_hash_by_identity_so_dicts_and_sets_still_work():
    a, b = Tensor([1.0, 2.0]), Tensor([1.0, 2.0])       # equal values, different tensors
    d = {a: "a", b: "b"}
    assert len(d) == 2 and d[a] == "a" and d[b] == "b"
    assert len({a, b, a}) == 2
    assert a in d and Tensor([1.0, 2.0]) not in d
    model = pk.models.mlp([3, 4, 2], seed=0)
    params = model.parameters()
    assert len(set(params)) == len(params) == 4


def test_accuracy_idioms_on_a_model():
    (x, y), _ = pk.data.load_digits()
    x, y = x[:300], y[:300]
    model = pk.models.mlp([64, 32, 10], seed=0)
    pred = np.argmax(model(x), 1)                        # the acceptance line
    np.testing.assert_array_equal(pred, model(x).data.argmax(axis=1))
    acc = (model(x).argmax(1) == y).mean()
    by_hand = sum(int(p == t) for p, t in zip(pred, y)) / len(y)
    assert acc == pytest.approx(by_hand)
    assert acc == pytest.approx(pk.evaluate(model, (x, y))["accuracy"])


# ------------------------------------------------------------ DataLoader over a dataset
class Squares:
    """A map-style dataset built on the fly: item i is ([i, i**2], i % 3)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.calls += 1
        return np.array([i, i * i], np.float32), i % 3


def test_dataloader_of_a_dataset_batches_like_torch():
    loader = DataLoader(Squares(7), batch_size=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    xb, yb = batches[0]
    np.testing.assert_array_equal(xb, [[0, 0], [1, 1], [2, 4]])
    np.testing.assert_array_equal(yb, [0, 1, 2])
    assert xb.dtype == np.float32 and xb.shape == (3, 2)
    np.testing.assert_array_equal(batches[2][0], [[6, 36]])   # last, smaller batch
    assert len(DataLoader(Squares(7), batch_size=3, drop_last=True)) == 2
    assert len(list(DataLoader(Squares(4)))) == 4             # batch_size defaults to 1, as in torch


def test_dataloader_dataset_positional_batch_size_as_torch():
    a = [yb.tolist() for _, yb in DataLoader(Squares(5), 2)]   # torch: DataLoader(dataset, batch_size)
    assert a == [[0, 1], [2, 0], [1]]
    with pytest.raises(TypeError, match="batch_size must be given once"):
        DataLoader(Squares(5), 2, 3)


def test_dataloader_fetches_items_every_epoch():
    ds = Squares(6)
    loader = DataLoader(ds, batch_size=4, shuffle=True, seed=0)
    ds.calls = 0
    list(loader), list(loader)
    assert ds.calls == 12                                # no cached copy: on-the-fly data changes


def test_dataset_and_arrays_give_the_same_batches():
    ds = Squares(23)
    x = np.stack([ds[i][0] for i in range(23)])
    y = np.array([ds[i][1] for i in range(23)])
    for kw in (dict(), dict(shuffle=True, seed=3), dict(shuffle=True, seed=3, drop_last=True)):
        from_ds = list(DataLoader(ds, batch_size=5, **kw))
        from_xy = list(DataLoader(x, y, 5, **kw))
        assert len(from_ds) == len(from_xy)
        for (xa, ya), (xb, yb) in zip(from_ds, from_xy):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    # ... and the same batches as the data glue makes of the dataset itself (every function taking data)
    for (xa, ya), (xb, yb) in zip(DataLoader(ds, batch_size=5), _glue.batches(ds, 5)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_arrays_are_an_array_dataset_as_in_torch():
    x, y = np.arange(12.0).reshape(6, 2), np.arange(6)
    loader = DataLoader(x, y, 4)
    assert isinstance(loader.dataset, pk.data.ArrayDataset) and len(loader.dataset) == 6  # len(loader.dataset)
    xi, yi = loader.dataset[2]
    assert xi.tolist() == [4.0, 5.0] and yi == 2
    first = next(iter(loader))[0]
    assert np.shares_memory(first, x)                    # unshuffled array batches stay views
    wrapped = DataLoader(pk.data.ArrayDataset(x, y), 4, shuffle=True, seed=1)
    plain = DataLoader(x, y, 4, shuffle=True, seed=1)
    for (xa, ya), (xb, yb) in zip(wrapped, plain, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert repr(loader) == "DataLoader(n_samples=6, batch_size=4, shuffle=False, drop_last=False, batches=2)"
    with pytest.raises(ValueError, match=r"ArrayDataset\(\): y must be an array with as many samples as x"):
        pk.data.ArrayDataset(x, y[:5])


def test_a_list_of_pairs_is_a_dataset():
    pairs = [(np.array([1.0, 2.0]), 0), (np.array([3.0, 4.0]), 1), (np.array([5.0, 6.0]), 1)]
    (xb, yb), = list(DataLoader(pairs, batch_size=3))
    np.testing.assert_array_equal(xb, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(yb, [0, 1, 1])


def test_a_dataset_trains_and_evaluates():
    (x, y), _ = pk.data.load_digits()
    ds = [(x[i], y[i]) for i in range(400)]
    model = pk.models.mlp([64, 32, 10], seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = pk.evaluate(model, DataLoader(ds, batch_size=100))["loss"]
    pk.fit(model, DataLoader(ds, batch_size=32, shuffle=True, seed=0), opt, epochs=3, progress=False)
    after = pk.evaluate(model, DataLoader(ds, batch_size=100))
    assert after["loss"] < before / 2 and after["accuracy"] > 0.8


def test_dataloader_rejects_what_is_not_a_dataset():
    with pytest.raises(TypeError, match=r"DataLoader\(\): y must be an array of targets when x is an array"):
        DataLoader(np.zeros((4, 2)), batch_size=2)
    with pytest.raises(TypeError, match=r"dataset must be an object with __len__ and __getitem__"):
        DataLoader(5, batch_size=2)
    with pytest.raises(TypeError, match=r"items are \(x, y\) pairs, got item 0 of type float"):
        DataLoader([1.0, 2.0], batch_size=2)
    with pytest.raises(ValueError, match="dataset must be non-empty"):
        DataLoader([], batch_size=2)
    bad_later = [(np.zeros(2), 0), (np.zeros(2), 1), 7]
    with pytest.raises(TypeError, match="items are \\(x, y\\) pairs, got item 2 of type int"):
        list(DataLoader(bad_later, batch_size=3))


# ------------------------------------------------------------ the package namespace
def test_import_star_and_every_name_in_all_resolves():
    code = (
        "import prunekit\n"
        "from prunekit import *\n"
        "missing = [n for n in prunekit.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "for n in dir(prunekit):\n"
        "    getattr(prunekit, n)\n"
        "print(len(prunekit.__all__))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(pk.__all__)


def test_lazy_modules_exist_and_unknown_names_are_attribute_errors():
    import importlib.util
    for name in pk._LAZY:
        assert importlib.util.find_spec(f"prunekit.{name}") is not None, name
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        pk.not_a_module  # noqa: B018


# ------------------------------------------------------------ keyword-only after the leading arguments
@pytest.mark.parametrize("call", [
    lambda: pk.nn.Conv2d(1, 6, 5, 1, 2, False),       # torch's 6th positional is dilation, not bias
    lambda: pk.nn.Linear(3, 2, True, 0),               # seed is keyword-only
    lambda: pk.nn.Dropout(0.5, 0),
    lambda: pk.models.lenet5(0),
    lambda: pk.models.mlp([2, 3], "relu", 0),
    lambda: pk.data.load_digits(0.2),
    lambda: pk.data.subset(np.zeros((4, 1)), np.zeros(4), 2, 0),
    lambda: pk.Tensor([1.0], True),                    # torch.tensor(data, *, requires_grad=...)
    lambda: pk.data.DataLoader(np.zeros((4, 1)), np.zeros(4), 2, True),
])
def test_options_after_the_leading_arguments_are_keyword_only(call):
    with pytest.raises(TypeError, match="positional argument"):
        call()


def test_the_same_calls_with_keywords_work():
    assert pk.nn.Conv2d(1, 6, 5, 1, 2, bias=False, seed=0).bias is None
    assert pk.nn.Linear(3, 2, False, seed=0).bias is None      # bias stays positional, as in torch
    assert pk.Tensor([1.0], requires_grad=True).requires_grad
    assert len(pk.data.DataLoader(np.zeros((4, 1)), np.zeros(4), 2, shuffle=True, seed=0)) == 2
