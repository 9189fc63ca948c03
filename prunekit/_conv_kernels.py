"""The hot loops of convolution and pooling, as numba kernels with NumPy references.

Each ``*_kernel`` below is compiled by numba on first use (see ``_jit.py``). Next
to each sits a plain NumPy ``*_reference`` that computes the same thing in a few
vectorised lines; the tests check kernel against reference, and the references
are the version to read first. Under the ``"numpy"`` backend (``pk.backend("numpy")``,
see ``_backend.py``) the references are what runs: each kernel is declared with
``@njit(reference=...)``, pointing at a two-line adapter (``*_into``) that calls the
reference with the kernel's own arguments and writes its result into the kernel's
output array.

Serial or parallel: callers pick ``kernel.for_work(n)`` (``_jit.PARALLEL_MIN_WORK``,
the one threshold for every kernel in prunekit).

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


def _im2col_into(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """:func:`im2col_reference` with :func:`im2col_kernel`'s arguments (what runs under the numpy backend)."""
    cols[...] = im2col_reference(x, kh, kw, sh, sw, ph, pw)


@njit(parallel=True, reference=_im2col_into)
def im2col_kernel(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """Fill ``cols`` (C*KH*KW, N*OH*OW) with the patches of ``x`` (N, C, H, W).

    Samples are shared out between the threads; each one's columns are filled by
    :func:`_im2col_sample`. (Why a separate function: inside a ``prange`` body numba
    cannot tell that an index built from the sample number is never negative, so it
    checks every access and the compiler leaves the copy loop scalar: measured 8x
    slower, 4.2 against 0.5 ms, for LeNet-5's second layer at batch 128 on one core.)
    """
    n_ = x.shape[0]
    m = oh * ow
    for n in prange(n_):
        _im2col_sample(x[n], kh, kw, sh, sw, ph, pw, oh, ow, cols[:, n * m:(n + 1) * m])


@njit
def _im2col_sample(x, kh, kw, sh, sw, ph, pw, oh, ow, cols):
    """One sample: ``cols`` (C*KH*KW, OH*OW) from ``x`` (C, H, W).

    The innermost loop runs along an output row, reading and writing memory in
    order, which is what makes this layout fast. A padded input is first copied
    into a zero-bordered buffer, so that loop has no bounds test and all its
    indices come from ``range``: the compiler then vectorises the copy.
    """
    c_, h_, w_ = x.shape
    if ph or pw:
        xp = np.zeros((c_, h_ + 2 * ph, w_ + 2 * pw), x.dtype)
        for c in range(c_):
            for y in range(h_):
                for j in range(w_):
                    xp[c, y + ph, j + pw] = x[c, y, j]
    else:
        xp = x
    for c in range(c_):
        for a in range(kh):
            for b in range(kw):
                r = (c * kh + a) * kw + b
                for i in range(oh):
                    y = i * sh + a
                    if sw == 1:
                        for j in range(ow):
                            cols[r, i * ow + j] = xp[c, y, j + b]
                    else:
                        for j in range(ow):
                            cols[r, i * ow + j] = xp[c, y, j * sw + b]


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


def _col2im_into(cols, kh, kw, sh, sw, ph, pw, oh, ow, out):
    """:func:`col2im_reference` with :func:`col2im_kernel`'s arguments: ``out`` is overwritten."""
    out[...] = col2im_reference(cols, out.shape, kh, kw, sh, sw, ph, pw)


@njit(parallel=True, reference=_col2im_into)
def col2im_kernel(cols, kh, kw, sh, sw, ph, pw, oh, ow, out):
    """Add every entry of ``cols`` (C*KH*KW, N*OH*OW) back into ``out`` (N, C, H, W), which is overwritten.

    Each sample writes only its own slice (no races); :func:`_col2im_sample` does one.
    """
    n_ = out.shape[0]
    m = oh * ow
    for n in prange(n_):
        _col2im_sample(cols[:, n * m:(n + 1) * m], kh, kw, sh, sw, ph, pw, oh, ow, out[n])


@njit
def _col2im_sample(cols, kh, kw, sh, sw, ph, pw, oh, ow, out):
    """One sample: ``out`` (C, H, W) = the sum of the patches in ``cols`` (C*KH*KW, OH*OW).

    With padding, the sums go into a zero-bordered buffer whose interior is then
    copied out, so the adding loop needs no bounds test (as in :func:`_im2col_sample`).
    """
    c_, h_, w_ = out.shape
    if ph or pw:
        acc = np.zeros((c_, h_ + 2 * ph, w_ + 2 * pw), out.dtype)
    else:
        acc = out
        acc[:] = 0
    for c in range(c_):
        for a in range(kh):
            for b in range(kw):
                r = (c * kh + a) * kw + b
                for i in range(oh):
                    y = i * sh + a
                    if sw == 1:
                        for j in range(ow):
                            acc[c, y, j + b] += cols[r, i * ow + j]
                    else:
                        for j in range(ow):
                            acc[c, y, j * sw + b] += cols[r, i * ow + j]
    if ph or pw:
        for c in range(c_):
            for y in range(h_):
                for j in range(w_):
                    out[c, y, j] = acc[c, y + ph, j + pw]


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


def _max_pool_into(x, kh, kw, sh, sw, out, arg):
    """:func:`max_pool_reference` with :func:`max_pool_kernel`'s arguments."""
    out[...], arg[...] = max_pool_reference(x, kh, kw, sh, sw)


def _max_pool_backward_into(g, arg, kh, kw, sh, sw, dx):
    """:func:`max_pool_backward_reference` with :func:`max_pool_backward_kernel`'s arguments."""
    dx[...] = max_pool_backward_reference(g, arg, dx.shape, kh, kw, sh, sw)


@njit(parallel=True, reference=_max_pool_into)
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


@njit(parallel=True, reference=_max_pool_backward_into)
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


# ------------------------------------------------- direct convolution
# For layers with few input channels (the first layer of an image model: 1 or 3
# channels) im2col is a bad deal: the patch matrix is kh*kw = 25 times bigger
# than the input, and the products that follow have an inner dimension of only
# C*kh*kw = 25 (forward) or a huge one with a tiny output (weight gradient), which
# BLAS runs far below its peak. These kernels loop over the input directly: for
# each output row, kh*kw*C multiply-adds of a whole row at a time (the inner loop
# over the row vectorises), all in L1 cache.

def conv_direct_reference(x, w, bias, sh, sw, ph, pw):
    """NumPy direct convolution: one broadcast multiply-add per kernel offset (C*kh*kw of them)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, oh, ow), dtype=np.result_type(x, w))
    for a in range(kh):
        for b in range(kw):
            win = xp[:, :, a:a + sh * oh:sh, b:b + sw * ow:sw]          # (N, C, OH, OW)
            y += np.einsum("nchw,oc->nohw", win, w[:, :, a, b])
    if bias is not None and bias.shape[0]:
        y += bias[None, :, None, None]
    return y


def conv_direct_grad_w_reference(x, g, kh, kw, ph, pw):
    """NumPy weight and bias gradients of the stride-1 convolution: (dW, db).

    dW[o, c, a, b] = sum over n, i, j of g[n, o, i, j] * xpad[n, c, i + a, j + b]:
    one contraction per kernel offset; db[o] = sum of g[:, o].
    """
    oh, ow = g.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dw = np.empty((g.shape[1], x.shape[1], kh, kw), dtype=np.result_type(x, g))
    for a in range(kh):
        for b in range(kw):
            dw[:, :, a, b] = np.einsum("nohw,nchw->oc", g, xp[:, :, a:a + oh, b:b + ow])
    return dw, g.sum(axis=(0, 2, 3))


def conv_direct_grad_x_reference(g, w, shape, ph, pw):
    """NumPy input gradient of the stride-1 convolution (its adjoint): every output gradient
    flows back through each kernel offset (a, b) to the input pixel it read."""
    n, c, h, wd = shape
    oh, ow = g.shape[2:]
    kh, kw = w.shape[2:]
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.result_type(g, w))
    for a in range(kh):
        for b in range(kw):
            dxp[:, :, a:a + oh, b:b + ow] += np.einsum("nohw,oc->nchw", g, w[:, :, a, b])
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def _conv_direct_into(x, w, bias, ph, pw, y):
    """:func:`conv_direct_reference` with :func:`conv_direct_kernel`'s arguments (empty ``bias``: none)."""
    y[...] = conv_direct_reference(x, w, bias, 1, 1, ph, pw)


def _conv_direct_grad_w_into(x, g, ph, pw, part_w, part_b):
    """:func:`conv_direct_grad_w_reference` with the kernel's arguments: the whole sum goes in task 0."""
    part_w[...], part_b[...] = 0, 0
    part_w[0], part_b[0] = conv_direct_grad_w_reference(x, g, part_w.shape[3], part_w.shape[4], ph, pw)


def _conv_direct_grad_x_into(g, w, ph, pw, dx):
    """:func:`conv_direct_grad_x_reference` with :func:`conv_direct_grad_x_kernel`'s arguments."""
    dx[...] = conv_direct_grad_x_reference(g, w, dx.shape, ph, pw)


@njit(inline="always")
def _flat_layout(h, w, oh, ph, pw):
    """(WP, rows, length): each sample is copied into ``rows`` x ``WP`` zero-padded flat rows.

    With stride 1, output pixel (i, j) reads input rows i..i+kh-1 and columns
    j..j+kw-1 of the padded sample, so with the padded sample stored flat (row
    length WP = W + 2 pw), all outputs for one kernel offset (a, b) are ONE
    contiguous multiply-add: ``acc[t] += w[a, b] * xp[a * WP + b + t]`` for
    t < length = OH * WP. The WP - OW columns of each accumulator row past OW are
    junk that is never copied out; one extra zero row keeps their reads in bounds.
    """
    wp = w + 2 * pw
    return wp, h + 2 * ph + 1, oh * wp


@njit(inline="always")
def _padded_flat(x, n, ph, pw, wp, rows):
    """Sample ``n`` of ``x`` as (C, rows * wp) zero-padded flat channels."""
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    xp = np.zeros((c_, rows * wp), dtype=x.dtype)
    for c in range(c_):
        for i in range(h_):
            for j in range(w_):
                xp[c, (i + ph) * wp + j + pw] = x[n, c, i, j]
    return xp


@njit(parallel=True, reference=_conv_direct_into)
def conv_direct_kernel(x, w, bias, ph, pw, y):
    """y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C, KH, KW), stride 1) + bias; one sample per task."""
    o_, c_, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    wp, rows, length = _flat_layout(x.shape[2], x.shape[3], oh, ph, pw)
    has_bias = bias.shape[0] > 0
    for n in prange(x.shape[0]):
        xp = _padded_flat(x, n, ph, pw, wp, rows)
        acc = np.empty(length, dtype=y.dtype)
        for o in range(o_):
            acc[:] = bias[o] if has_bias else 0
            for c in range(c_):
                src = xp[c]
                for a in range(kh):
                    for b in range(kw):
                        wv = w[o, c, a, b]
                        shifted = src[a * wp + b:]  # a view, so the loop index is a plain t >= 0
                        for t in range(length):
                            acc[t] += wv * shifted[t]
            for i in range(oh):
                for j in range(ow):
                    y[n, o, i, j] = acc[i * wp + j]


@njit(inline="always")
def _padded_grad(g, n, o, wp, out):
    """g[n, o] (OH, OW) into the flat (OH * wp) row layout of the direct kernels, zeros past OW."""
    oh, ow = g.shape[2], g.shape[3]
    for i in range(oh):
        for j in range(ow):
            out[i * wp + j] = g[n, o, i, j]


@njit(parallel=True, fastmath={"reassoc", "contract"}, reference=_conv_direct_grad_w_into)
def conv_direct_grad_w_kernel(x, g, ph, pw, part_w, part_b):
    """Per-task partial weight and bias gradients: ``part_w`` (T, O, C, KH, KW), ``part_b`` (T, O).

    Both are overwritten; task t takes samples t, t + T, ...; the caller sums over T.
    dW[o, c, a, b] is a dot product of the (padded) output gradient with the input
    shifted by (a, b). ``reassoc`` lets these dot products use vector lanes: the sum is
    then accumulated in a different (pairwise-like) order, as BLAS does anyway.
    """
    n_tasks = part_w.shape[0]
    o_, c_, kh, kw = part_w.shape[1], part_w.shape[2], part_w.shape[3], part_w.shape[4]
    wp, rows, length = _flat_layout(x.shape[2], x.shape[3], g.shape[2], ph, pw)
    for t in prange(n_tasks):
        part_w[t] = 0
        part_b[t] = 0
        gp = np.zeros(length, dtype=part_w.dtype)  # columns past OW stay zero: junk outputs get no gradient
        for n in range(t, x.shape[0], n_tasks):
            xp = _padded_flat(x, n, ph, pw, wp, rows)
            for o in range(o_):
                _padded_grad(g, n, o, wp, gp)
                s = part_w.dtype.type(0)
                for k in range(length):
                    s += gp[k]
                part_b[t, o] += s
                for c in range(c_):
                    src = xp[c]
                    for a in range(kh):
                        for b in range(kw):
                            shifted = src[a * wp + b:]
                            s = part_w.dtype.type(0)
                            for k in range(length):
                                s += gp[k] * shifted[k]
                            part_w[t, o, c, a, b] += s


@njit(parallel=True, reference=_conv_direct_grad_x_into)
def conv_direct_grad_x_kernel(g, w, ph, pw, dx):
    """dx (N, C, H, W), overwritten: the adjoint of :func:`conv_direct_kernel` (same loops, roles swapped)."""
    o_, c_, kh, kw = w.shape
    h_, w_ = dx.shape[2], dx.shape[3]
    wp, rows, length = _flat_layout(h_, w_, g.shape[2], ph, pw)
    for n in prange(g.shape[0]):
        dxp = np.zeros((c_, rows * wp), dtype=dx.dtype)
        gp = np.zeros(length, dtype=dx.dtype)
        for o in range(o_):
            _padded_grad(g, n, o, wp, gp)
            for c in range(c_):
                dst = dxp[c]
                for a in range(kh):
                    for b in range(kw):
                        wv = w[o, c, a, b]
                        shifted = dst[a * wp + b:]
                        for t in range(length):
                            shifted[t] += wv * gp[t]
        for c in range(c_):
            for i in range(h_):
                for j in range(w_):
                    dx[n, c, i, j] = dxp[c, (i + ph) * wp + j + pw]
