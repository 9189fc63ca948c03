"""Inference modules on the sparse kernels: SparseLinear, SparseConv2d, SparseSequential, to_sparse.

Training stays dense + mask; once a model is pruned, :func:`to_sparse` returns a
*new* model (the original is left as it was) whose Linear and Conv2d layers run
on the numba kernels, with the same outputs up to float32 round-off::

    fast = to_sparse(model)              # format="auto", inference_batch=1
    with no_grad():
        y = fast(x)

At batch 1 a small MLP is ruled by call overhead, not arithmetic (a few
microseconds of multiply-adds, tens of microseconds of Python and NumPy calls).
So :class:`SparseSequential` runs every run of Linear/ReLU layers as *one*
numba call (:class:`FusedChain`) when the batch is small: few calls, few
arguments, no allocation per call.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import _backend
from .. import functional as F
from .. import nn
from .._validate import check_int, check_number, check_option, fail
from ..tensor import Tensor, is_grad_enabled
from . import kernels
from .costmodel import DEFAULT, CostModel
from .formats import BSR, CSR, NM, Int8Weight, SparseFormat

__all__ = ["SparseLinear", "SparseConv2d", "SparseSequential", "FusedChain", "to_sparse", "FORMATS"]

FORMATS = ("csr", "bsr", "nm", "int8")


def _make_format(w, format, block_size=16, n=2, m=4, name="weight"):
    check_option("format", format, FORMATS)
    if format == "csr":
        return CSR.from_dense(w)
    if format == "bsr":
        return BSR.from_dense(w, block_size)
    if format == "nm":
        return NM.from_dense(w, n, m)
    return Int8Weight.from_dense(w)


def _array_in(x, name="x"):
    """(array, was_tensor) for a Tensor or ndarray input of an inference module."""
    if isinstance(x, Tensor):
        if x.requires_grad and is_grad_enabled():
            fail(name, "a Tensor that does not require grad (sparse modules are inference-only; "
                 "train the dense model with masks, or wrap the call in prunekit.no_grad())",
                 "a Tensor with requires_grad=True")
        return x.data, True
    if isinstance(x, np.ndarray):
        return x, False
    fail(name, "a Tensor or a numpy.ndarray", type(x).__name__, TypeError)


class _RunsOnArrays:
    """Inference modules: ``run`` works on ndarrays; calling the module wraps it for Tensors."""

    def __call__(self, x):
        a, _ = _array_in(x)
        return Tensor(self.run(a))

    def forward(self, x):
        return self(x)


class SparseLinear(_RunsOnArrays, nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored as CSR, BSR, N:M or int8; inference only.

    ``weight`` is a dense (pruned) array of shape ``(out, in)`` or a ready
    :class:`~prunekit.sparse.formats.SparseFormat`. Calling it on a Tensor or
    an ndarray returns a Tensor (like every Module), without a gradient graph.
    :meth:`run` is the bare ndarray -> ndarray path.
    """

    def __init__(self, weight, bias=None, format="csr", block_size=16, n=2, m=4):
        super().__init__()
        if isinstance(weight, SparseFormat):
            w = weight
            format = {CSR: "csr", BSR: "bsr", NM: "nm", Int8Weight: "int8"}[type(weight)]
        else:
            if not isinstance(weight, np.ndarray):
                fail("weight", "a 2-D numpy.ndarray or a CSR/BSR/NM/Int8Weight", type(weight).__name__, TypeError)
            w = _make_format(weight, format, block_size, n, m)
        self.weight = w
        self.format = format
        self.out_features, self.in_features = w.shape
        if bias is not None:
            bias = bias.data if isinstance(bias, Tensor) else bias
            if not isinstance(bias, np.ndarray) or bias.shape != (self.out_features,):
                got = f"shape {bias.shape}" if isinstance(bias, np.ndarray) else type(bias).__name__
                fail("bias", f"None or an array of shape ({self.out_features},)", got)
            bias = np.ascontiguousarray(bias, dtype=np.float32 if format == "int8" else w.dtype)
        self.bias = bias
        self.training = False

    @classmethod
    def from_linear(cls, linear, format="csr", block_size=16, n=2, m=4):
        """Convert an ``nn.Linear`` (its current weights, pruned zeros dropped)."""
        if not isinstance(linear, nn.Linear):
            fail("linear", "an nn.Linear", type(linear).__name__, TypeError)
        bias = None if linear.bias is None else linear.bias.data
        return cls(linear.weight.data, bias, format=format, block_size=block_size, n=n, m=m)

    def run(self, a, out=None):
        """ndarray ``(..., in)`` -> ndarray ``(..., out)``."""
        if a.ndim <= 2:
            return kernels.linear(self.weight, a, bias=self.bias, out=out)
        lead = a.shape[:-1]
        y = kernels.linear(self.weight, a.reshape(-1, a.shape[-1]), bias=self.bias)
        return y.reshape(lead + (self.out_features,))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight={self.weight!r}")


class SparseConv2d(_RunsOnArrays, nn.Module):
    """Conv2d on the sparse kernels: ``im2col`` then ``cols @ W.reshape(O, -1).T``; inference only."""

    def __init__(self, weight, bias=None, stride=1, padding=0, format="csr", block_size=16, n=2, m=4):
        super().__init__()
        if not isinstance(weight, np.ndarray) or weight.ndim != 4:
            got = f"shape {weight.shape}" if isinstance(weight, np.ndarray) else type(weight).__name__
            fail("weight", "a 4-D array (out_channels, in_channels, kh, kw)", got)
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.stride = F._pair("stride", stride)
        self.padding = F._pair("padding", padding)
        self.linear = SparseLinear(weight.reshape(self.out_channels, -1), bias, format, block_size, n, m)
        self.format = format
        self.training = False

    @classmethod
    def from_conv(cls, conv, format="csr", block_size=16, n=2, m=4):
        if not isinstance(conv, nn.Conv2d):
            fail("conv", "an nn.Conv2d", type(conv).__name__, TypeError)
        bias = None if conv.bias is None else conv.bias.data
        return cls(conv.weight.data, bias, conv.stride, conv.padding, format, block_size, n, m)

    def run(self, a):
        if a.ndim != 4 or a.shape[1] != self.in_channels:
            fail("x", f"a 4-D input (N, {self.in_channels}, H, W)", f"shape {a.shape}")
        n, _, h, w = a.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        cols = F.im2col(a, self.kernel_size, self.stride, self.padding)
        y = self.linear.run(cols)
        return np.ascontiguousarray(y.reshape(n, oh, ow, self.out_channels).transpose(0, 3, 1, 2))

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, weight={self.linear.weight!r}")


# ----------------------------------------------------------------------------- fused chains


class FusedChain:
    """A run of Linear(+ReLU) layers packed for one numba call per forward.

    ``layers`` is a list of ``(weight, bias, relu)`` where ``weight`` is a CSR
    or a dense ``(out, in)`` array. Everything the kernel needs goes into four
    flat arrays (values, column indices, an int64 ``meta`` with shapes, offsets
    and indptrs, and a scratch buffer), so the call has six arguments and
    allocates nothing but its output.
    """

    def __init__(self, layers, dtype=np.float32):
        dtype = np.dtype(dtype)
        if not layers:
            fail("layers", "a non-empty list of (weight, bias, relu)", layers)
        for (w, _, _), (w2, _, _) in zip(layers[:-1], layers[1:]):
            if w2.shape[1] != w.shape[0]:
                fail("layers", "consecutive layers whose shapes chain (out of one = in of the next)",
                     f"{w.shape} then {w2.shape}")
        csr_layers = [w for w, _, _ in layers if isinstance(w, CSR)]
        wide = any(w.shape[1] > 65536 for w, _, _ in layers)
        col_dtype = np.int32 if wide else np.uint16
        n_csr = sum(w.nnz for w in csr_layers)
        extra = sum((w.size if isinstance(w, np.ndarray) else 0) + (0 if b is None else b.size) for w, b, _ in layers)
        vals = np.empty(n_csr + extra, dtype=dtype)
        cols = np.empty(n_csr, dtype=col_dtype)
        n_layers = len(layers)
        head = kernels.chain_record(n_layers)  # the indptrs start after the last record
        n_ptr = sum(w.shape[0] + 1 for w in csr_layers)
        meta = np.zeros(head + n_ptr, dtype=np.int64)
        meta[0] = n_layers
        pos_csr, pos_extra, pos_ptr = 0, n_csr, head
        K = kernels  # the CHAIN_* field offsets, shared with the kernels that read these records
        for li, (w, b, relu) in enumerate(layers):
            d = K.chain_record(li)
            n_out, n_in = w.shape
            meta[d + K.CHAIN_N_IN] = n_in
            meta[d + K.CHAIN_N_OUT] = n_out
            if isinstance(w, CSR):
                vals[pos_csr:pos_csr + w.nnz] = w.data
                cols[pos_csr:pos_csr + w.nnz] = w.indices
                meta[pos_ptr:pos_ptr + n_out + 1] = w.indptr.astype(np.int64) + pos_csr
                meta[d + K.CHAIN_KIND] = K.CHAIN_CSR
                meta[d + K.CHAIN_WHERE] = pos_ptr
                pos_csr += w.nnz
                pos_ptr += n_out + 1
            else:
                vals[pos_extra:pos_extra + w.size] = np.asarray(w).ravel()
                meta[d + K.CHAIN_KIND] = K.CHAIN_DENSE
                meta[d + K.CHAIN_WHERE] = pos_extra
                pos_extra += w.size
            if b is None:
                meta[d + K.CHAIN_BIAS] = -1
            else:
                vals[pos_extra:pos_extra + n_out] = b
                meta[d + K.CHAIN_BIAS] = pos_extra
                pos_extra += n_out
            meta[d + K.CHAIN_RELU] = 1 if relu else 0
        self.vals, self.cols, self.meta = vals, cols, meta
        self.in_features = layers[0][0].shape[1]
        self.out_features = layers[-1][0].shape[0]
        widest = max([w.shape[0] for w, _, _ in layers[:-1]] + [1])
        self.work = np.zeros(2 * widest, dtype=dtype)
        self.dtype = dtype
        self.nnz = n_csr + sum(w.size for w, _, _ in layers if isinstance(w, np.ndarray))
        self._fast_kernel = None  # chosen on first use under the numba backend (see _kernel)

    @property
    def _kernel(self):
        """The chain kernel: the SIMD one for float32 on x86-64, else the scalar one. Under the numpy
        backend the scalar one, whose NumPy reference then runs (importing the SIMD module imports numba)."""
        if not _backend.use_numba():
            return kernels.fused_chain_kernel
        if self._fast_kernel is None:
            simd = kernels._simd_module(self.dtype)
            self._fast_kernel = kernels.fused_chain_kernel if simd is None else simd.fused_chain
        return self._fast_kernel

    def run(self, a, out=None):
        """ndarray ``(B, in)`` -> ``(B, out)``, one kernel call (not thread-safe: shared scratch).

        The kernel trusts its arguments (it reads and writes raw memory), so they are
        checked here: shape, dtype, and a C-contiguous copy of a strided input.
        """
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != self.in_features:
            fail("a", f"a 2-D array of shape (batch, {self.in_features})",
                 f"shape {getattr(a, 'shape', type(a).__name__)}")
        if a.dtype != self.dtype:
            fail("a", f"an array of dtype {np.dtype(self.dtype)} (the chain's dtype)", str(a.dtype), TypeError)
        a = np.ascontiguousarray(a)
        out = kernels._as_output(out, (a.shape[0], self.out_features), self.dtype)
        self._kernel(a, self.vals, self.cols, self.meta, self.work, out)
        return out


def _linear_spec(m):
    """(weight CSR or dense array, bias array or None) if ``m`` can join a fused chain, else None."""
    if isinstance(m, SparseLinear) and m.format == "csr":
        return m.weight, m.bias
    if type(m) is nn.Linear:
        return m.weight.data, None if m.bias is None else m.bias.data
    return None


_TRANSPARENT = (nn.Identity, nn.Dropout)  # no-ops at inference (the model is in eval mode)


class SparseSequential(_RunsOnArrays, nn.Sequential):
    """A Sequential that runs each run of Linear/ReLU children as one fused call at small batch.

    The children (and their names "0", "1", ...) are exactly those of the
    Sequential it replaces. Runs of CSR ``SparseLinear``/dense ``Linear`` layers
    joined by ``ReLU`` (``Identity``/``Dropout`` are skipped) become a
    :class:`FusedChain`, used when the batch has at most ``fuse_max_batch``
    rows; larger batches go layer by layer through the parallel kernels.
    ``fuse_max_batch=0`` fuses nothing (``to_sparse(..., fuse=False)``): every
    child runs on its own, with the same inputs accepted (Tensor or ndarray).
    """

    def __init__(self, *modules, fuse_max_batch=8):
        super().__init__(*modules)
        object.__setattr__(self, "fuse_max_batch", check_int("fuse_max_batch", fuse_max_batch, low=0))
        self.training = False
        self.refresh()

    def refresh(self):
        """Rebuild the fused chains (call after changing a child's weights)."""
        mods = list(self._modules.values())
        segments = {}
        i = 0
        while i < len(mods) and self.fuse_max_batch > 0:
            j, layers, n_sparse = i, [], 0
            while j < len(mods):
                spec = _linear_spec(mods[j])
                if spec is None:
                    break
                w, b = spec
                if layers and layers[-1][0].shape[0] != w.shape[1]:
                    break
                k = j + 1
                relu = False
                while k < len(mods) and (isinstance(mods[k], _TRANSPARENT) or type(mods[k]) is nn.ReLU):
                    relu = relu or type(mods[k]) is nn.ReLU
                    k += 1
                layers.append((w, b, relu))
                n_sparse += isinstance(w, CSR)
                j = k
            dtypes = {(w.dtype if isinstance(w, CSR) else np.asarray(w).dtype) for w, _, _ in layers}
            if n_sparse and len(dtypes) == 1:
                segments[i] = (j, FusedChain(layers, dtype=dtypes.pop()))
                i = j
            else:
                i += 1
        object.__setattr__(self, "_segments", segments)
        whole = segments.get(0)
        # one chain covering every child: __call__ can go straight to its kernel
        object.__setattr__(self, "_whole", whole[1] if whole is not None and whole[0] == len(mods) else None)

    def __call__(self, x):
        chain = self._whole
        if chain is not None and type(x) is Tensor and not self.training and _backend._current == "numba":
            a = x.data
            if (type(a) is np.ndarray and a.ndim == 2 and a.shape[0] <= self.fuse_max_batch
                    and a.shape[1] == chain.in_features and a.dtype == chain.dtype and a.flags.c_contiguous
                    and not (x.requires_grad and is_grad_enabled())):
                # the batch-1 inference call, ruled by overhead: the same checks as the general path
                # (run -> FusedChain.run), done once, then the compiled kernel
                out = np.empty((a.shape[0], chain.out_features), chain.dtype)
                chain._kernel.compiled()(a, chain.vals, chain.cols, chain.meta, chain.work, out)
                return Tensor(out)
        return super().__call__(x)

    def run(self, a):
        """ndarray in, ndarray out: fused runs at small batch, the children one by one otherwise."""
        mods = list(self._modules.values())
        fuse = not self.training
        i = 0
        while i < len(mods):
            seg = self._segments.get(i) if fuse and a.ndim == 2 and a.shape[0] <= self.fuse_max_batch else None
            if seg is not None and a.dtype.kind == "f" and a.shape[1] == seg[1].in_features:
                a = seg[1].run(np.ascontiguousarray(a, dtype=seg[1].dtype))
                i = seg[0]
                continue
            m = mods[i]
            if isinstance(m, (SparseLinear, SparseConv2d, SparseSequential)):
                a = m.run(a)
            elif type(m) is nn.ReLU:
                a = np.maximum(a, 0)
            elif isinstance(m, _TRANSPARENT) and not m.training:
                pass
            else:
                a = m(Tensor(a)).data
            i += 1
        return a

    def extra_repr(self):
        return f"fused runs: {sorted(self._segments)}" if self._segments else ""


# ----------------------------------------------------------------------------- to_sparse


def _layer_choice(w, format, min_sparsity, block_size, n, m, rows, cost_model, name, fused=False, conv_in=0):
    """Format for one weight matrix (2-D view), or None to keep it dense.

    ``rows``: rows of the product (batch, times output pixels for a convolution);
    ``fused``: the layer would run inside a fused Linear/ReLU chain; ``conv_in``: the
    im2col width of a convolution (0 for a Linear). See :meth:`CostModel.choose_layer`.
    """
    size = w.size
    nnz = int(np.count_nonzero(w))
    sparsity = 1 - nnz / size if size else 0.0
    if format == "int8":
        return "int8"
    if format == "nm":
        if w.shape[1] % m or np.any((w.reshape(w.shape[0], -1, m) != 0).sum(axis=2) > n):
            fail("format", f"a format the layer '{name}' supports: its weight {w.shape} has no {n}:{m} pattern",
                 format)
        return "nm"
    if sparsity < min_sparsity:
        return None
    if format == "bsr":
        r, c = (block_size, block_size) if np.isscalar(block_size) else block_size
        if w.shape[0] % r or w.shape[1] % c:
            fail("block_size", f"a block size dividing the shape {w.shape} of layer '{name}'", block_size)
        return "bsr"
    if format == "csr":
        return "csr"
    # auto: ask the cost model whether a sparse format clearly beats dense for this layer
    stored = {"dense": size, "csr": nnz}
    r, c = (block_size, block_size) if np.isscalar(block_size) else block_size
    if w.shape[0] % r == 0 and w.shape[1] % c == 0:
        tiles = w.reshape(w.shape[0] // r, r, w.shape[1] // c, c)
        stored["bsr"] = int(np.any(tiles != 0, axis=(1, 3)).sum()) * r * c
    if w.shape[1] % m == 0 and not np.any((w.reshape(w.shape[0], -1, m) != 0).sum(axis=2) > n):
        stored["nm"] = size * n // m
    best = cost_model.choose_layer(stored, rows, fused=fused, conv_elements=rows * conv_in)
    return None if best == "dense" else best


PIXELS_PER_IMAGE = 64  # output pixels per image assumed for a convolution (to_sparse does not see the input size)


def _replace(parent, name, module):
    """Swap a child module in place (``setattr`` would move it to the end of the child order)."""
    parent._modules[name] = module
    object.__setattr__(parent, name, module)


def to_sparse(model, format="auto", *, min_sparsity=0.5, block_size=16, n=2, m=4, inference_batch=1,
              cost_model=None, fuse=True, fuse_max_batch=8):
    """A new inference model whose Linear/Conv2d layers (and their subclasses) run on the sparse (or int8) kernels.

    ``format``: "auto" (the default): per layer, the format the cost model
    (:mod:`prunekit.sparse.costmodel`) predicts fastest at ``inference_batch`` rows
    (Conv2d: rows = batch x 64 output pixels), counting what a sparse module costs
    around its kernel; a layer stays dense unless sparse is predicted clearly
    (1.2x) faster, so the default never makes a model slower. Measured on the
    shared 2-core machine (busy, so indicative; medians of interleaved runs): LeNet-5
    pruned to 90%, batch 1, ran at 0.67-0.82x the dense model's speed with "csr"
    (the old default: its sparse convolutions cost more than they save) and at
    1.04-1.20x with "auto", which keeps the convolutions dense and fuses the three
    Linear layers into one call, with and without one core held by a busy loop
    (``python benchmarks/kernels.py --lenet5``).
    "csr", "bsr" (``block_size`` must divide every converted layer), "nm" (every
    layer must have the ``n:m`` pattern), "int8" (per-row int8 weights; outputs
    change by the quantization error) force one format. Layers with sparsity
    below ``min_sparsity`` stay dense (except for "nm"/"int8").
    ``inference_batch``: the batch you expect to run the model at (the cost model's rows).
    ``fuse``: Sequential runs of Linear/ReLU become one numba call for batches
    of at most ``fuse_max_batch`` rows. With ``fuse=False`` the Sequentials are still
    converted to :class:`SparseSequential` (fusing nothing), so both accept the same
    inputs: a Tensor or an ndarray, batch 1 or B, 1-D where the layers allow it.
    The original model is not modified.
    """
    if not isinstance(model, nn.Module):
        fail("model", "a prunekit.nn.Module", type(model).__name__, TypeError)
    check_option("format", format, FORMATS + ("auto",))
    check_number("min_sparsity", min_sparsity, 0, 1)
    check_int("inference_batch", inference_batch, low=1)
    check_int("n", n, low=1)
    check_int("m", m, low=1)
    check_int("fuse_max_batch", fuse_max_batch, low=0)
    if not isinstance(fuse, bool):
        fail("fuse", "True or False", fuse, TypeError)
    if cost_model is None:
        cost_model = DEFAULT
    elif not isinstance(cost_model, CostModel):
        fail("cost_model", "None or a CostModel", type(cost_model).__name__, TypeError)
    max_batch = fuse_max_batch if fuse else 0
    new = copy.deepcopy(model)
    new.eval()

    def convert(mod, prefix):
        # a Linear directly in a Sequential runs inside a fused chain when the expected batch is small enough
        fused = type(mod) is nn.Sequential and inference_batch <= max_batch
        for name, child in list(mod.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, nn.Linear):
                w = child.weight.data
                fmt = _layer_choice(w, format, min_sparsity, block_size, n, m, inference_batch, cost_model, full,
                                    fused=fused)
                if fmt is not None:
                    _replace(mod, name, SparseLinear.from_linear(child, fmt, block_size, n, m))
            elif isinstance(child, nn.Conv2d):
                w = child.weight.data.reshape(child.out_channels, -1)
                rows = inference_batch * PIXELS_PER_IMAGE
                fmt = _layer_choice(w, format, min_sparsity, block_size, n, m, rows, cost_model, full,
                                    conv_in=w.shape[1])
                if fmt is not None:
                    _replace(mod, name, SparseConv2d.from_conv(child, fmt, block_size, n, m))
            else:
                convert(child, full)
                if type(child) is nn.Sequential:
                    _replace(mod, name, SparseSequential(*child._modules.values(), fuse_max_batch=max_batch))

    convert(new, "")
    if type(new) is nn.Sequential:
        new = SparseSequential(*new._modules.values(), fuse_max_batch=max_batch)
    return new
