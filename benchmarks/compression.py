"""Deep Compression on Fashion-MNIST: accuracy, bytes on disk, ratio and batch-1 latency per stage.

    python benchmarks/compression.py                  # LeNet-300-100 and LeNet-5, the default recipe
    python benchmarks/compression.py --model lenet300 # one model (lenet300, lenet5, lenet5_aggressive)
    python benchmarks/compression.py --quick          # a tiny run (seconds) that checks the pipeline
    python benchmarks/compression.py --no-latency     # accuracy and bytes only (no timing: faster; for a busy machine)

Stages (Han, Mao & Dally 2016): dense float32 -> iterative magnitude pruning with
fine-tuning -> k-means weight sharing with centroid fine-tuning -> Huffman coding; then the
rows of :data:`STAGES` (affine quantization, Jacob et al. 2018): int8 post-training
quantization of the dense and of the pruned model (per-channel symmetric weights, per-tensor
activations calibrated on 256 training images, integer-only forward), 4-bit weights after
training (to show why QAT is needed) and 4-bit QAT (fake-quant fine-tuning from the dense
model, then converted to the integer model), each 4-bit pair with one weight scale per output
channel and with one per tensor.
Every "bytes on disk" figure is the size of a file actually written
(``nn.save`` for the dense model, ``quant.save_compressed`` for the pruned and the
compressed ones, ``quant.export`` for the quantized ones: a layer with enough zeros as a bitmask plus its
nonzeros), every overhead included
(indices, codebooks, code tables, scales, biases, zip and manifest); the ratio is against the
dense file. The compressed and the quantized models' accuracy and latency are measured on the
model read back from its file (``quant.load_compressed`` + ``quant.unshare``, ``quant.load_exported``).
"batch-1 sparse" runs the pruned layers on prunekit's sparse kernels (``sparse.to_sparse(model, "auto")``).
"batch-1 ONNX Runtime" runs the same model exported with ``quant.export_onnx`` (float graph for the
float rows, QDQ for the quantized ones) in ONNX Runtime with one intra-op thread, after checking that it
agrees with prunekit on up to 1,000 test images (float: allclose; QDQ: within one output quantization
step; a row that misses is not timed and says by how many steps); "-" if onnxruntime is not
installed. Latencies are medians over single test images, timed interleaved: each image goes
through every runner of every row in turn.

Adding a row: append a :class:`Stage` ``(name, build)`` to :data:`STAGES`; ``build(ctx)`` gets a
:class:`Context` (the trained dense and pruned models, the data, a directory) and returns the model
read back from the file it wrote, and that file's path (see :func:`int8_ptq`).

Anchors (Han et al. 2016, MNIST): LeNet-300-100 40x (1070 KB -> 27 KB, error
1.64% -> 1.58%), LeNet-5 39x (1720 KB -> 44 KB, error 0.80% -> 0.74%).
Seeds are fixed; a rerun on the same machine gives the same accuracies and bytes.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from typing import Callable, NamedTuple

import numpy as np

import prunekit as pk
from prunekit import quant
from prunekit import pruning as P

# Recipes: per-layer target sparsity (Han et al. 2015 prune the first layers hardest),
# k-means bits per layer, epochs per stage.
RECIPES = {
    "lenet300": {
        "build": pk.models.lenet_300_100, "flatten": True,
        "sparsity": {"0.weight": 0.93, "2.weight": 0.88, "4.weight": 0.6},
        "bits": {"0": 4, "2": 5, "4": 5},
        "train_epochs": 12, "prune_rounds": 4, "prune_epochs": 3, "share_epochs": 2, "qat_epochs": 2,
    },
    "lenet5": {
        "build": pk.models.lenet5, "flatten": False,
        "sparsity": {"0.weight": 0.4, "3.weight": 0.8, "7.weight": 0.93, "9.weight": 0.88, "11.weight": 0.6},
        "bits": {"0": 8, "3": 8, "7": 4, "9": 5, "11": 5},
        "train_epochs": 8, "prune_rounds": 3, "prune_epochs": 2, "share_epochs": 2, "qat_epochs": 2,
    },
    "lenet5_aggressive": {
        "build": pk.models.lenet5, "flatten": False,
        "sparsity": {"0.weight": 0.5, "3.weight": 0.85, "7.weight": 0.95, "9.weight": 0.9, "11.weight": 0.7},
        "bits": {"0": 5, "3": 6, "7": 4, "9": 4, "11": 5},
        "train_epochs": 8, "prune_rounds": 3, "prune_epochs": 2, "share_epochs": 2, "qat_epochs": 2,
    },
}
"""Per-layer target sparsity (the first, largest layers pruned hardest, as Han et al. 2015 do),
k-means bits per layer (the paper: 8 for conv, 5 for fully-connected; 4 for the 784x300
layer here), and epochs: dense training (SGD 0.05, momentum 0.9, cosine), each round of
iterative pruning (SGD 0.01, cosine), centroid fine-tuning (SGD 1e-4, momentum 0.9: a
centroid's gradient sums over every weight that shares it, so its step is that much larger),
4-bit QAT from the dense model (SGD 0.01, momentum 0.9, cosine).
"lenet5_aggressive" prunes harder and gives the small conv layers 5-6-bit codebooks
(a 256-entry codebook costs 1 KB, more than the 75 weights of the first conv): smaller,
but it loses more accuracy (see BENCHMARKS_compression.md)."""

CALIBRATION_SAMPLES = 256
"""Training images the post-training quantizers calibrate on (TFLite recommends 100-500); picked with seed 0."""

ORT_CHECK_IMAGES = 1000
"""Test images on which ONNX Runtime must agree with prunekit before it is timed (issue 12's acceptance)."""


class Row(NamedTuple):
    """One stage of one model: the model as measured (read back from its file where there is one)."""

    stage: str
    accuracy: float
    nbytes: int          # bytes of the file on disk
    model: object        # a float prunekit model or a quant.QuantizedModel


class Context(NamedTuple):
    """What a :class:`Stage` builds from."""

    dense: pk.nn.Module      # the trained dense float model
    pruned: pk.nn.Module     # the pruned, fine-tuned float model (masks on)
    train: tuple             # (x, y) training arrays
    test: tuple              # (x, y) test arrays
    calibration: tuple       # (x, y): CALIBRATION_SAMPLES training images
    recipe: dict             # the model's entry of RECIPES
    workdir: str             # a directory for the stage's files (deleted after the run)


class Stage(NamedTuple):
    """An extra row of the table: ``build(ctx: Context) -> (model, path)``.

    ``build`` writes its model to a file under ``ctx.workdir`` and returns the model *read
    back from that file* and the file's path: the row's accuracy and latency are those of the
    returned model, its "bytes on disk" the file's size.
    """

    name: str
    build: Callable


def reloaded(qmodel, path):
    """``quant.export`` the quantized model to ``path``, then read it back: ``(model from the file, path)``."""
    path = quant.export(qmodel, path)
    return quant.load_exported(path), path


def int8_ptq(ctx, model=None, weight_bits=8, per_channel=True, tag="int8"):
    """Post-training static quantization of ``model`` (default: the dense one), calibrated on ``ctx.calibration``."""
    model = ctx.dense if model is None else model
    q = quant.quantize_model(model, ctx.calibration, weight_bits=weight_bits, per_channel=per_channel,
                             n_samples=len(ctx.calibration[0]))
    return reloaded(q, os.path.join(ctx.workdir, f"{tag}.npz"))


def qat_4bit(ctx, per_channel=True):
    """4-bit weights, 8-bit activations, trained with fake quantization from the dense model, then converted."""
    qat = quant.prepare_qat(ctx.dense, ctx.calibration, weight_bits=4, activation_bits=8, per_channel=per_channel,
                            n_samples=len(ctx.calibration[0]))
    epochs = ctx.recipe["qat_epochs"]
    opt = pk.optim.SGD(qat.parameters(), lr=0.01, momentum=0.9)
    pk.fit(qat, pk.data.DataLoader(*ctx.train, 128, shuffle=True, seed=1), opt, epochs,
           scheduler=pk.optim.CosineAnnealingLR(opt, epochs), progress=False)
    return reloaded(quant.convert(qat), os.path.join(ctx.workdir, "qat4.npz" if per_channel else "qat4_tensor.npz"))


STAGES = [
    Stage("int8 PTQ (dense; per-channel, integer-only)", int8_ptq),
    Stage("int8 PTQ of the pruned model", lambda ctx: int8_ptq(ctx, ctx.pruned, tag="int8_pruned")),
    Stage("4-bit PTQ (4-bit weights per channel, int8 activations)",
          lambda ctx: int8_ptq(ctx, weight_bits=4, tag="ptq4")),
    Stage("QAT 4-bit (4-bit weights per channel, int8 activations)", qat_4bit),
    Stage("4-bit PTQ, one weight scale per tensor",
          lambda ctx: int8_ptq(ctx, weight_bits=4, per_channel=False, tag="ptq4_tensor")),
    Stage("QAT 4-bit, one weight scale per tensor", lambda ctx: qat_4bit(ctx, per_channel=False)),
]
"""The rows after Deep Compression's; append a :class:`Stage` to add one. The per-tensor 4-bit pair
shows what QAT is for: with one scale per output channel 4-bit weights lose little even after
training, with one scale per tensor (what some accelerators support) they lose more, and QAT wins it back."""


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def accuracy(model, test):
    return pk.evaluate(model, test)["accuracy"]


def file_bytes(write):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")
        write(path)
        return os.path.getsize(path)


def deep_compression(name, recipe, train, test, log=print):
    """Run the recipe; return the dense, pruned and compressed :class:`Row` s, the final report and the shared model."""
    loader = pk.data.DataLoader(*train, 128, shuffle=True, seed=0)
    model = recipe["build"](seed=0)
    sgd = lambda params, lr: pk.optim.SGD(params, lr=lr, momentum=0.9)  # noqa: E731
    opt = sgd(model.parameters(), 0.05)
    sched = pk.optim.CosineAnnealingLR(opt, recipe["train_epochs"])
    t0 = time.perf_counter()
    pk.fit(model, loader, opt, recipe["train_epochs"], scheduler=sched, progress=False)
    dense = recipe["build"](seed=0)
    dense.load_state_dict(model.state_dict())
    rows = [Row("dense float32", accuracy(model, test), file_bytes(lambda p: pk.nn.save(model, p)), dense)]
    log(f"{name}: dense {rows[0].accuracy:.4f} ({time.perf_counter() - t0:.0f} s)")

    targets = recipe["sparsity"]
    steps = recipe["prune_rounds"]
    for i in range(1, steps + 1):          # geometric schedule per layer (Han et al. 2015, iterative)
        P.prune_to(model, {k: 1 - (1 - s) ** (i / steps) for k, s in targets.items()})
        opt = sgd(model.parameters(), 0.01)
        pk.fit(model, loader, opt, recipe["prune_epochs"],
               scheduler=pk.optim.CosineAnnealingLR(opt, recipe["prune_epochs"]), progress=False)
        log(f"  prune round {i}: sparsity {P.sparsity(model).total:.3f}, acc {accuracy(model, test):.4f}")
    pruned = recipe["build"](seed=0)
    pruned.load_state_dict(model.state_dict())
    rows.append(Row("pruned (float32 values + Huffman relative indices)", accuracy(model, test),
                    file_bytes(lambda p: quant.save_compressed(model, p)), pruned))

    quant.share_weights(model, recipe["bits"])
    acc_shared = accuracy(model, test)
    pk.fit(model, loader, sgd(quant.codebooks(model), 1e-4), recipe["share_epochs"], progress=False)
    log(f"  k-means: {acc_shared:.4f} before centroid fine-tuning, {accuracy(model, test):.4f} after")
    report = quant.compression_report(model)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.npz")
        quant.save_compressed(model, path)
        size = os.path.getsize(path)
        loaded = quant.load_compressed(path)          # what a user deploys: the file, read back
    assert size == report.bytes["file"], (size, report.bytes["file"])
    quant.unshare(loaded)                             # decode the weights once, then run plain layers
    rows.append(Row("pruned + k-means + Huffman (compressed file)", accuracy(loaded, test), size, loaded))
    log(f"  total {time.perf_counter() - t0:.0f} s")
    return rows, report, model


def stage_rows(ctx, stages=None, log=print):
    """One :class:`Row` per :class:`Stage` (default :data:`STAGES`), measured on the model read back from its file."""
    rows = []
    for stage in STAGES if stages is None else stages:
        t = time.perf_counter()
        model, path = stage.build(ctx)
        rows.append(Row(stage.name, accuracy(model, ctx.test), os.path.getsize(path), model))
        log(f"  {stage.name}: {rows[-1].accuracy:.4f}, {rows[-1].nbytes:,d} bytes ({time.perf_counter() - t:.0f} s)")
    return rows


# --------------------------------------------------------------------------- ONNX Runtime


class OrtCheck(NamedTuple):
    """ONNX Runtime against prunekit on the same images, before any timing."""

    kind: str            # "float" or "QDQ"
    agrees: bool
    max_diff: float      # largest |ORT - prunekit| over the outputs
    tolerance: float     # what "agrees" allowed (QDQ: one output quantization step)
    same_class: float    # share of images on which both predict the same class


def _predict(model, x):
    if isinstance(model, quant.QuantizedModel):
        return model.run(x)
    model.eval()
    with pk.no_grad():
        return model(pk.Tensor(x)).data


def ort_session(model, x, workdir, tag):
    """Export ``model`` to ONNX (float graph, or QDQ for a QuantizedModel), open it in ONNX Runtime with one
    intra-op thread and check it against prunekit on ``x``: ``(session, OrtCheck)``, or ``(None, None)``
    without onnxruntime.

    Float: ``allclose`` (rtol 1e-4, atol 1e-4 of the largest output). QDQ: every output within one
    quantization step (the output scale) of prunekit's integer model, as issue 12 asks.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None, None
    quantized = isinstance(model, quant.QuantizedModel)
    path = quant.export_onnx(model, os.path.join(workdir, f"{tag}.onnx"), quantized=quantized,
                             input_shape=None if quantized else tuple(x.shape[1:]))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    ours = _predict(model, x)
    theirs = session.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0]
    diff = float(np.abs(theirs - ours).max())
    same = float((theirs.argmax(1) == ours.argmax(1)).mean())
    if quantized:
        tol = model.output_qp[0] * 1.001
        return session, OrtCheck("QDQ", diff <= tol, diff, tol, same)
    tol = 1e-4 * float(np.abs(ours).max())
    return session, OrtCheck("float", bool(np.allclose(theirs, ours, rtol=1e-4, atol=tol)), diff, tol, same)


# --------------------------------------------------------------------------- batch-1 latency


def interleaved_latency(runners, x, repeats, seed=0):
    """Median seconds per call of each ``runners[name](one image)``, timed interleaved.

    Image ``i`` goes through every runner in turn, in a fresh random order each time
    (``seed``), so a busy patch of a shared machine slows all of them alike and no runner
    always follows the same one (whose cache footprint it would inherit). One untimed
    call each first (numba compilation, ONNX Runtime's first run).
    """
    names = list(runners)
    for n in names:
        runners[n](x[:1])
    rng = np.random.default_rng(seed)
    times = {n: [] for n in names}
    for i in range(repeats):
        xi = x[i % len(x)][None]
        for k in rng.permutation(len(names)):
            t = time.perf_counter()
            runners[names[k]](xi)
            times[names[k]].append(time.perf_counter() - t)
    return {n: float(np.median(v)) for n, v in times.items()}


def _prunekit_runner(model):
    if isinstance(model, quant.QuantizedModel):
        return model.run                      # float in, float out; integers inside

    def run(xi):
        with pk.no_grad():
            return model(pk.Tensor(xi))
    model.eval()
    return run


class Measured(NamedTuple):
    """A :class:`Row` with its batch-1 latencies (seconds; None where that runner does not apply)."""

    stage: str
    accuracy: float
    nbytes: int
    prunekit_s: float
    sparse_s: float | None     # pruned layers on prunekit's sparse kernels
    ort_s: float | None        # ONNX Runtime, 1 intra-op thread (None: not installed, or it disagreed)
    ort_check: OrtCheck | None


def measure(rows, x, workdir, repeats):
    """Batch-1 latency of every row in prunekit (dense and, if pruned, sparse kernels) and ONNX Runtime.

    All the runners of all the rows are timed in one interleaved loop (:func:`interleaved_latency`),
    so the rows compare with each other as fairly as the runners of one row do.
    """
    runners, checks = {}, []
    for i, row in enumerate(rows):
        runners[i, "prunekit"] = _prunekit_runner(row.model)
        if not isinstance(row.model, quant.QuantizedModel) and P.is_pruned(row.model):
            runners[i, "sparse"] = _prunekit_runner(pk.sparse.to_sparse(row.model, "auto"))
        session, check = ort_session(row.model, x[:ORT_CHECK_IMAGES], workdir, f"row{i}")
        if check is not None and check.agrees:
            runners[i, "ort"] = lambda xi, s=session: s.run(None, {"input": xi})
        checks.append(check)
    t = interleaved_latency(runners, x, repeats)
    return [Measured(row.stage, row.accuracy, row.nbytes, t[i, "prunekit"], t.get((i, "sparse")), t.get((i, "ort")),
                     checks[i]) for i, row in enumerate(rows)]


# --------------------------------------------------------------------------- the run


def model_rows(name, recipe, train, test, stages=None, repeats=500, log=print, latency=True):
    """Deep Compression, then the :data:`STAGES` rows, then latencies: ``(list of Measured, report, shared model)``.

    ``latency=False`` skips the timing and the ONNX Runtime check (their columns say "-").
    """
    rows, report, model = deep_compression(name, recipe, train, test, log=log)
    pick = np.random.default_rng(0).choice(len(train[0]), min(CALIBRATION_SAMPLES, len(train[0])), replace=False)
    with tempfile.TemporaryDirectory() as d:
        ctx = Context(rows[0].model, rows[1].model, train, test, (train[0][pick], train[1][pick]), recipe, d)
        rows += stage_rows(ctx, stages, log=log)
        if latency:
            measured = measure(rows, np.ascontiguousarray(test[0], np.float32), d, repeats)
        else:
            measured = [Measured(r.stage, r.accuracy, r.nbytes, None, None, None, None) for r in rows]
    return measured, report, model


def _us(s):
    return "-" if s is None else f"{s * 1e6:.0f} us"


def _ort_cell(m):
    c = m.ort_check
    if c is None:
        return "-"
    return _us(m.ort_s) if c.agrees else f"not timed: {c.max_diff / c.tolerance:.1f} steps off"


def table(measured):
    """The rows as a Markdown table (ratio and loss against the first row, the dense model)."""
    dense = measured[0]
    lines = ["| stage | accuracy | loss (pt) | bytes on disk | ratio | batch-1 prunekit | batch-1 sparse "
             "| batch-1 ONNX Runtime |", "|---|---|---|---|---|---|---|---|"]
    for m in measured:
        lines.append(f"| {m.stage} | {m.accuracy:.2%} | {100 * (dense.accuracy - m.accuracy):.2f} | {m.nbytes:,d} "
                     f"| {dense.nbytes / m.nbytes:.1f}x | {_us(m.prunekit_s)} | {_us(m.sparse_s)} | {_ort_cell(m)} |")
    return "\n".join(lines)


def run(names, quick=False, latency=True):
    """Run the benchmark for the models ``names`` (keys of :data:`RECIPES`) and print the tables;
    returns ``{name: list of Measured}``. ``quick``: 2,000 training and 500 test images, one epoch per stage.
    ``latency=False``: accuracy and bytes only."""
    train, test = pk.data.load_fashion_mnist(flatten=True)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); numpy {np.__version__}; prunekit {pk.__version__}")
    results = {}
    for name in names:
        recipe = dict(RECIPES[name])
        tr, te = train, test
        if not recipe["flatten"]:
            tr = (train[0].reshape(-1, 1, 28, 28), train[1])
            te = (test[0].reshape(-1, 1, 28, 28), test[1])
        if quick:
            tr, te = (tr[0][:2000], tr[1][:2000]), (te[0][:500], te[1][:500])
            recipe.update(train_epochs=1, prune_rounds=1, prune_epochs=1, share_epochs=1, qat_epochs=1)
        measured, report, model = model_rows(name, recipe, tr, te, repeats=50 if quick else 500, latency=latency)
        results[name] = measured
        print(report)
        print(f"\n{name} on Fashion-MNIST ({len(te[0])} test images)\n")
        print(table(measured))
        for m in measured:
            if m.ort_check is not None:
                c = m.ort_check
                print(f"  ONNX Runtime ({c.kind}) vs prunekit, {min(len(te[0]), ORT_CHECK_IMAGES)} images, "
                      f"{m.stage}: max |diff| {c.max_diff:.3g} (allowed {c.tolerance:.3g}), same class on "
                      f"{c.same_class:.1%}: {'agrees' if c.agrees else 'DISAGREES'}")
        print(f"  (float32 parameters alone: {report.bytes['dense']:,d} bytes; the compressed file is "
              f"{report.ratio('file'):.1f}x smaller than them)")
        sweep = ", ".join(f"{g} bits: {quant.compression_report(model, gap_bits=g).bytes['file']:,d} B"
                          for g in (4, 5, 6, 8, "auto"))
        print(f"  file size by relative-index width ({sweep})\n")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(RECIPES), action="append")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-latency", action="store_true", help="accuracy and bytes only: no batch-1 timing, "
                    "no ONNX Runtime check (faster, and nothing to distort on a busy machine)")
    args = ap.parse_args()
    run(args.model or ["lenet300", "lenet5"], args.quick, latency=not args.no_latency)
