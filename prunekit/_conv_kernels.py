"""The hot loops of convolution and pooling, as numba kernels with NumPy references.

Each ``*_kernel`` below is compiled by numba on first use (see ``_jit.py``). Next
to each sits a plain NumPy ``*_reference`` that computes the same thing in a few
vectorised lines; the tests check kernel against reference, and the references
are the version to read first.

Layout conventions (NCHW input, as in PyTorch):

* ``im2col``: column ``(n, oh, ow)`` of the (C*KH*KW, N*OH*OW) matrix holds the
  patch that produces output pixel ``(oh, ow)`` of sample ``n``; row ``(c, i, j)``
  is channel ``c`` at kernel offset ``(i, j)``, which matches
  ``weight.reshape(out_channels, -1)``, so the convolution is
  ``weight.reshape(O, -1) @ cols``. (Patches as columns, not rows: the inner
  loops then run along image rows, about 5x faster than the row layout.)
* ``col2im`` is the adjoint of ``im2col``: it adds every column entry back to
  the pixel it was copied from (pixels in several patches get several adds).
"""
from __future__ import annotations

import numpy as np

from ._jit import njit

prange = range  # replaced by numba.prange when a parallel kernel is compiled


PARALLEL_MIN_WORK = 1 << 16
"""Below this many elements a kernel runs on one thread: waking the worker threads
would cost more than the loop (tens of microseconds, far more on a busy machine)."""


def pick(kernel, work):
    """The parallel kernel for big inputs, its serial twin for small ones."""
    return kernel if work >= PARALLEL_MIN_WORK else kernel.serial


def out_size(size, k, stride, pad):
    """Output length of a sliding window: floor((size + 2 pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


# ------------------------------------------------------------------ im2col
def im2col_reference(x, kh, kw, sh, sw, ph, pw):
    """NumPy im2col: a strided view of every patch, then one copy into the column matrix."""
    n, c = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    oh, ow = win.shape[2], win.shape[3]
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, n * oh * ow)


@njit(parallel=True)
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """Fill ``cols`` (C*KH*KW, N*OH*OW) with the patches of ``x`` (N, C, H, W).

    The innermost loop runs along an output row, reading and writing memory in
    order, which is what makes this layout fast.
    """
    n_, c_, h_, w_ = x.shape
    for n in prange(n_):
        for c in range(c_):
            for a in range(kh):
                for b in range(kw):
                    r = (c * kh + a) * kw + b
                    for i in range(oh):
                        y = i * sh - ph + a
                        base = (n * oh + i) * ow
                        if y < 0 or y >= h_:
                            for j in range(ow):
                                cols[r, base + j] = 0
                        else:
                            for j in range(ow):
                                xx = j * sw - pw + b
                                cols[r, base + j] = x[n, c, y, xx] if 0 <= xx < w_ else 0


# ------------------------------------------------------------------ col2im
def col2im_reference(cols, shape, kh, kw, sh, sw, ph, pw):
    """NumPy col2im: one vectorised add per kernel offset (KH*KW adds in all)."""
    n, c, h, w = shape
    oh, ow = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    patches = cols.reshape(c, kh, kw, n, oh, ow)
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for a in range(kh):
        for b in range(kw):
            xp[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw] += patches[:, a, b].transpose(1, 0, 2, 3)
    return xp[:, :, ph:ph + h, pw:pw + w]


@njit(parallel=True)
def col2im_kernel(cols, kh, kw, sh, sw, ph, pw, oh, ow, out):
    """Add every entry of ``cols`` (C*KH*KW, N*OH*OW) back into ``out`` (N, C, H, W), which is overwritten."""
    n_, c_, h_, w_ = out.shape
    for n in prange(n_):  # each sample writes only its own slice: no races
        out[n] = 0
        for c in range(c_):
            for a in range(kh):
                for b in range(kw):
                    r = (c * kh + a) * kw + b
                    for i in range(oh):
                        y = i * sh - ph + a
                        if 0 <= y < h_:
                            base = (n * oh + i) * ow
                            for j in range(ow):
                                xx = j * sw - pw + b
                                if 0 <= xx < w_:
                                    out[n, c, y, xx] += cols[r, base + j]


# ----------------------------------------------------------- max pooling
def max_pool_reference(x, kh, kw, sh, sw):
    """NumPy max pooling: returns (out, argmax) with argmax the flat offset a*kw+b in the window.

    Ties go to the first maximum in row-major window order, as in PyTorch.
    """
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    flat = win.reshape(win.shape[:4] + (kh * kw,))
    arg = flat.argmax(axis=-1)
    return np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0], arg


def max_pool_backward_reference(g, arg, shape, kh, kw, sh, sw):
    """Route each output gradient to the input position that won the max."""
    n, c, h, w = shape
    oh, ow = g.shape[2:]
    dx = np.zeros(shape, dtype=g.dtype)
    for a in range(kh):
        for b in range(kw):
            dx[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw] += g * (arg == a * kw + b)
    return dx


@njit(parallel=True)
def max_pool_kernel(x, kh, kw, sh, sw, out, arg):
    """Max over each window of ``x``; ``arg`` gets the winning flat offset a*kw+b."""
    n_, c_ = x.shape[0], x.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        for i in range(oh):
            for j in range(ow):
                best = x[n, c, i * sh, j * sw]
                best_k = 0
                for a in range(kh):
                    for b in range(kw):
                        v = x[n, c, i * sh + a, j * sw + b]
                        if v > best:
                            best = v
                            best_k = a * kw + b
                out[n, c, i, j] = best
                arg[n, c, i, j] = best_k


@njit(parallel=True)
def max_pool_backward_kernel(g, arg, kh, kw, sh, sw, dx):
    """Scatter ``g`` to the argmax positions; ``dx`` is overwritten."""
    n_, c_ = g.shape[0], g.shape[1]
    oh, ow = g.shape[2], g.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        dx[n, c] = 0
        for i in range(oh):
            for j in range(ow):
                k = arg[n, c, i, j]
                dx[n, c, i * sh + k // kw, j * sw + k % kw] += g[n, c, i, j]
