"""The benchmark harnesses in benchmarks/: their bookkeeping, not their timings (those live in BENCHMARKS.md)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def kb():
    return load("kernels")


def test_interleaved_times_every_candidate_in_shuffled_rounds(kb):
    calls = []
    cands = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    t = kb.interleaved(cands, rounds=5, block=3, settle=0.0)
    assert set(t) == set("abc")
    assert all(isinstance(v, kb.Timing) and v >= 0 and v.p10 <= v for v in t.values())
    # 2 warm-up calls each, then per round each candidate: its settle loop (0 s: no call) + 3 timed calls
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"] and len(calls) == 6 + 5 * 3 * 3
    blocks = [calls[i:i + 3] for i in range(6, len(calls), 3)]
    assert all(len(set(blk)) == 1 for blk in blocks)
    orders = [tuple(blk[0] for blk in blocks[r * 3:(r + 1) * 3]) for r in range(5)]
    assert all(sorted(o) == ["a", "b", "c"] for o in orders)  # every round visits every candidate once
    assert len(set(orders)) > 1  # in a shuffled order


def test_timing_and_ratio(kb):
    a, b = kb.Timing([4.0, 4.0, 4.0, 8.0]), kb.Timing([1.0, 2.0, 2.0, 2.0])
    assert float(a) == 4.0 and float(b) == 2.0
    med, p10 = kb.ratio(a, b)
    assert med == 2.0 and p10 == pytest.approx(a.p10 / b.p10)
    assert kb._r((2.0, 3.0), 4.0) == "2.00x (3.00x) [4.0x]" and kb._r(None) == "-"


def test_rows_format_every_field(kb):
    r = {"batch": 1, "dense_us": 100.0, "dense_p10_us": 90.0, "int8": (5.0, 6.0), "limit": 4.0,
         "int8_portable": (1.5, 1.4), "stream": (9.0, 8.0)}
    line = kb.format_int8_row(r)
    assert "int8 5.00x (6.00x) [4.0x]" in line and "portable int8 1.50x" in line and "stream" in line
    del r["stream"], r["int8_portable"]
    assert "portable" not in kb.format_int8_row(r)


def test_train_step_counts_whole_turns_and_checks_its_options():
    ts = load("train_step")
    assert ts.timed_steps(300, 32) == 310 and ts.timed_steps(200, 8) == 203 and ts.timed_steps(1, 2) == 1
    for reps, block in ((300, 32), (7, 3), (1, 50)):
        n = ts.timed_steps(reps, block)
        assert n >= reps and n % (block - 1) == 0
    for bad in (["--block", "1"], ["--block", "0"], ["--settle", "-1"], ["--reps", "0"]):
        p = subprocess.run([sys.executable, str(BENCH / "train_step.py"), *bad], capture_output=True, text=True)
        assert p.returncode == 2 and "error" in p.stderr, (bad, p.stderr)


def test_torch_parity_checks_its_options_before_needing_torch():
    for bad in (["--steps", "0"], ["--every", "0"], ["--optimizer", "lbfgs"], ["--dtype", "float16"]):
        p = subprocess.run([sys.executable, str(BENCH / "torch_parity.py"), *bad], capture_output=True, text=True)
        assert p.returncode == 2 and "error" in p.stderr and "Traceback" not in p.stderr, (bad, p.stderr)


def test_every_benchmark_documents_its_command():
    for f in BENCH.glob("*.py"):
        doc = f.read_text().split('"""')[1]
        assert f"benchmarks/{f.name}" in doc, f"{f.name}: the docstring should say how to run it"
    text = (BENCH / "BENCHMARKS.md").read_text()
    for f in BENCH.glob("*.py"):
        assert f"benchmarks/{f.name}" in text, f"BENCHMARKS.md does not mention {f.name}"
    assert all((BENCH / link).exists() for link in ("BENCHMARKS_kernels.md", "BENCHMARKS_kernels_avx512.md"))


def test_lenet5_default_row_and_its_markdown(kb):
    """The issue-9 row: default to_sparse vs dense on LeNet-5 at batch 1, on the machine as it is and with a busy core."""
    quiet = {"busy_core": None, "dense_us": 90.0, "to_sparse_us": 75.0, "csr_us": 120.0,
             "vs_dense": (1.2, 1.25), "csr_vs_dense": (0.75, 0.8)}
    busy = {**quiet, "busy_core": 1, "vs_dense": (1.1, 1.15)}
    line = kb.format_lenet5_row(quiet)
    assert "default to_sparse vs dense, batch 1 (machine as it is)" in line and "1.20x (1.25x)" in line
    assert "(core 1 busy)" in kb.format_lenet5_row(busy) and "1.10x (1.15x)" in kb.format_lenet5_row(busy)
    md = kb.markdown({"cores": 2}, [], [], [], "python benchmarks/kernels.py", None, None, [quiet, busy])
    assert "## LeNet-5 pruned to 90%, the default `to_sparse(model)` vs dense, batch 1" in md
    assert "| as it was | 90.0 | 75.0 | 1.20x (1.25x) | 120.0 | 0.75x (0.80x) |" in md
    assert "| core 1 busy |" in md
    assert "LeNet-5" not in kb.markdown({"cores": 2}, [], [], [], "cmd", None)  # no rows, no section


def test_busy_core_holds_a_core_and_lets_it_go(kb):
    import os
    import time

    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two cores")

    def cpu_of_children():
        return sum(os.times()[2:4])  # user + system time of waited-for children

    t0 = cpu_of_children()
    with kb.busy_core() as core:
        assert core == max(os.sched_getaffinity(0))
        time.sleep(0.3)
    spent = cpu_of_children() - t0
    assert spent > 0.1  # the child really spun (0.6 s of wall time, at least a share of one core)


# ------------------------------------------------------------------ compression.py: the quantized rows and ONNX Runtime
@pytest.fixture(scope="module")
def cb():
    return load("compression")


@pytest.fixture(scope="module")
def quick_lenet300(cb, tmp_path_factory):
    """The --quick recipe of LeNet-300-100 on 2,000 / 300 Fashion-MNIST images, plus one user-added Stage."""
    import numpy as np

    import prunekit as pk
    from prunekit import quant

    (x, y), (xt, yt) = pk.data.load_fashion_mnist(flatten=True)
    train, test = (x[:2000], y[:2000]), (xt[:300], yt[:300])
    recipe = dict(cb.RECIPES["lenet300"], train_epochs=1, prune_rounds=1, prune_epochs=1, share_epochs=1,
                  qat_epochs=1)
    seen = {}

    def per_tensor_int8(ctx):
        seen["ctx"] = ctx
        q = quant.quantize_model(ctx.dense, ctx.calibration, per_channel=False)
        return cb.reloaded(q, os.path.join(ctx.workdir, "per_tensor.npz"))

    stages = cb.STAGES + [cb.Stage("int8 PTQ, per-tensor weights", per_tensor_int8)]
    rows, _, _ = cb.deep_compression("tiny", recipe, train, test, log=lambda s: None)
    workdir = tmp_path_factory.mktemp("compression")
    pick = np.random.default_rng(0).choice(len(train[0]), cb.CALIBRATION_SAMPLES, replace=False)
    ctx = cb.Context(rows[0].model, rows[1].model, train, test, (train[0][pick], train[1][pick]), recipe,
                     str(workdir))
    rows += cb.stage_rows(ctx, stages, log=lambda s: None)
    return rows, ctx, seen, workdir



def test_quantized_rows_are_models_read_back_from_their_files(cb, quick_lenet300):
    from prunekit import quant

    rows, ctx, seen, workdir = quick_lenet300
    by = {r.stage.split(" (")[0]: r for r in rows}
    assert list(by)[:3] == ["dense float32", "pruned", "pruned + k-means + Huffman"]
    dense = by["dense float32"]
    int8, ptq4, qat4 = by["int8 PTQ"], by["4-bit PTQ"], by["QAT 4-bit"]
    for r in (int8, by["int8 PTQ of the pruned model"], ptq4, qat4, by["int8 PTQ, per-tensor weights"]):
        assert isinstance(r.model, quant.QuantizedModel)
        assert r.model.float_model is None                      # loaded from a file, not the in-memory result
        again = quant.export(r.model, workdir / "again.npz")   # the file it came from had exactly these bytes
        assert os.path.getsize(again) == r.nbytes
        assert r.accuracy == pytest.approx(float((r.model.run(ctx.test[0]).argmax(1) == ctx.test[1]).mean()))
    assert 3.6 < dense.nbytes / int8.nbytes <= 4.0                # int8: ~4x below float32 (scales, biases, manifest)
    assert 7.0 < dense.nbytes / qat4.nbytes <= 8.0                # 4-bit weights, bit-packed: ~8x
    assert quant.read_manifest(workdir / "qat4.npz")["ops"][0]["attrs"]["packed_bits"] == 4
    assert abs(dense.accuracy - int8.accuracy) <= 0.02           # 300 images: coarse, but int8 is close
    # the user-added stage got the context the docstring promises
    ctx_seen = seen["ctx"]
    assert ctx_seen.dense is dense.model and ctx_seen.pruned is by["pruned"].model
    assert len(ctx_seen.calibration[0]) == cb.CALIBRATION_SAMPLES
    assert ctx_seen.recipe["qat_epochs"] == 1


def test_onnx_runtime_agrees_with_every_row_and_is_timed(cb, quick_lenet300):
    pytest.importorskip("onnxruntime")
    rows, ctx, _, workdir = quick_lenet300
    measured = cb.measure(rows, ctx.test[0], str(workdir), repeats=3)
    assert [m.stage for m in measured] == [r.stage for r in rows]
    for m in measured:
        c = m.ort_check
        assert c.kind == ("QDQ" if "PTQ" in m.stage or "QAT" in m.stage else "float")
        assert c.agrees and c.max_diff <= c.tolerance and c.same_class > 0.95, m
        assert m.ort_s > 0 and m.prunekit_s > 0
        assert (m.sparse_s is not None) == m.stage.startswith("pruned")
    md = cb.table(measured)
    assert md.count("\n") == len(rows) + 1 and "not timed" not in md


def test_onnx_runtime_missing_gives_a_dash(cb, quick_lenet300, monkeypatch):
    import sys

    rows, ctx, _, workdir = quick_lenet300
    monkeypatch.setitem(sys.modules, "onnxruntime", None)       # import onnxruntime -> ImportError
    assert cb.ort_session(rows[0].model, ctx.test[0][:10], str(workdir), "x") == (None, None)
    measured = cb.measure(rows[:1], ctx.test[0], str(workdir), repeats=2)
    assert measured[0].ort_s is None and measured[0].ort_check is None
    assert cb.table(measured).splitlines()[-1].endswith("| - | - |")
    bad = measured[0]._replace(ort_check=cb.OrtCheck("QDQ", False, 0.3, 0.1, 0.9))
    assert "not timed: 3.0 steps off" in cb.table([bad])


def test_interleaved_latency_sends_each_image_through_every_runner_in_shuffled_order(cb):
    import numpy as np

    calls = []
    runners = {k: (lambda xi, k=k: calls.append((k, xi.shape, float(xi[0, 0])))) for k in "abc"}
    x = np.arange(4, dtype=np.float32)[:, None]
    t = cb.interleaved_latency(runners, x, repeats=8)
    assert set(t) == set("abc") and all(v >= 0 for v in t.values())
    assert [c[0] for c in calls[:3]] == ["a", "b", "c"]           # one untimed call each first
    timed = calls[3:]
    assert len(timed) == 24 and all(c[1] == (1, 1) for c in timed)
    rounds = [timed[i:i + 3] for i in range(0, 24, 3)]
    assert all({c[2] for c in r} == {float(i % 4)} for i, r in enumerate(rounds))   # image i in round i ...
    assert all(sorted(c[0] for c in r) == ["a", "b", "c"] for r in rounds)         # ... through every runner
    orders = [tuple(c[0] for c in r) for r in rounds]
    assert len(set(orders)) > 1                                                     # in a shuffled order
    calls.clear()
    cb.interleaved_latency(runners, x, repeats=8)
    assert [tuple(c[0] for c in calls[3 + i:6 + i]) for i in range(0, 24, 3)] == orders   # seeded: the same order


def test_distributed_seed_summary_configurations_and_options():
    db = load("distributed")
    mean, sd, diff, worst = db.seed_summary([0.80, 0.84, 0.86], [0.85, 0.85, 0.85])
    assert mean == pytest.approx(0.833333, abs=1e-6)
    assert sd == pytest.approx(0.030551, abs=1e-6)                 # sample sd (n - 1) by hand
    assert diff == pytest.approx(-5 / 3) and worst == pytest.approx(-5.0)   # points, seed by seed
    assert db.seed_summary([0.9], [0.8]) == pytest.approx((0.9, 0.0, 10.0, 10.0))
    with pytest.raises(ValueError, match="equally long"):
        db.seed_summary([0.9, 0.8], [0.8])
    rows = db.configurations(10, quick=True, encoding="gap16+float16", seed=2)
    assert rows[0][0].startswith("dense") and rows[0][1] is None
    sparse = [(label, comp) for label, comp, *_ in rows if comp is not None and comp.name in ("topk", "dgc")]
    assert sparse and all(label.endswith(", gap16+float16") and comp.encoding.name == "gap16+float16"
                          for label, comp in sparse)
    assert [c.seed for _, c, *_ in rows if c is not None and c.name in ("qsgd", "powersgd")] == [2, 2]
    for bad in (["--seeds", "0"], ["--encoding", "zip"]):
        with pytest.raises(SystemExit):
            db.main(bad)


def test_distributed_dgc_rows_standard_error_and_new_options():
    db = load("distributed")
    # s.e. of the seed-by-seed difference in points: diffs -5, -1, +1 -> sd 3.0551, / sqrt(3)
    assert db.standard_error([0.80, 0.84, 0.86], [0.85, 0.85, 0.85]) == pytest.approx(1.763834, abs=1e-6)
    assert db.standard_error([0.9], [0.8]) == 0.0
    label, comp, opt = db.parse_dgc("ratio=0.0008,scope=tensor,clip_norm=1,warmup_epochs=0.5,nesterov=true", 196,
                                    "gap16+float16")
    assert (comp.ratio, comp.scope, comp.clip_norm, comp.warmup_steps, comp.nesterov) == (0.0008, "tensor", 1.0, 98,
                                                                                           True)
    assert comp.momentum == 0.9 and comp.encoding.name == "gap16+float16" and label.endswith(", gap16+float16")
    assert opt is db.plain_sgd                                     # DGC keeps the momentum itself
    _, comp, opt = db.parse_dgc("momentum=0,opt_momentum=0.9", 10)
    assert comp.momentum == 0.0 and comp.ratio == 0.001
    import prunekit as pk

    assert opt(pk.models.mlp([2, 2], seed=0).parameters()).momentum == 0.9
    _, comp, _ = db.parse_dgc("momentum_masking=false,scale_by_lr=1", 10)
    assert (comp.momentum_masking, comp.scale_by_lr) == (False, True)
    assert db.parse_dgc("ratio=0.01", 10)[1].momentum_masking is True
    for bad in ("ratio", "rate=0.1", "nesterov=maybe", "ratio=x", "scale_by_lr=yes"):
        with pytest.raises(ValueError, match="--dgc"):
            db.parse_dgc(bad, 10)
    for bad in (["--seed-offset", "-1"], ["--dgc", "ratio=2"], ["--dgc", "speed=1"]):
        with pytest.raises(SystemExit):
            db.main(bad)


def test_distributed_schedule_option_is_validated_and_cosine_decays_per_step():
    db = load("distributed")
    import numpy as np

    import prunekit as pk
    from prunekit import distributed as dist

    assert db.lr_callbacks("constant", 10) == []
    for bad in (("linear", 10), ("cosine", 0), ("cosine", 2.5)):
        with pytest.raises(ValueError, match="lr_callbacks"):
            db.lr_callbacks(*bad)
    for bad in (["--schedule", "linear"], ["--schedule"]):
        with pytest.raises(SystemExit):
            db.main(bad)
    # 2 epochs of 4 steps: the rate seen by each step follows 0.05 (1 + cos(pi t / 8)) / 2, then 0
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, 32)
    seen = []

    class Spy(pk.train.Callback):
        def on_batch_end(self, state):
            seen.append(state.optimizer.lr)

    trainer = dist.DataParallelTrainer(lambda: pk.models.mlp([4, 2], seed=0), db.momentum_sgd, dist.Cluster(2))
    trainer.fit((x, y), epochs=2, batch_size=8, callbacks=[Spy()] + db.lr_callbacks("cosine", 8))
    assert seen == pytest.approx([0.05 * (1 + np.cos(np.pi * t / 8)) / 2 for t in range(8)])
    assert trainer.optimizer.lr == pytest.approx(0.0, abs=1e-12)
