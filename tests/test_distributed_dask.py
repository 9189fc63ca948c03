"""DaskBackend on a real LocalCluster (2 single-threaded processes on localhost, started and
stopped here): the same weights as the simulator, also when a worker dies mid-task; a clear
error for an unreachable scheduler; threshold pruning chunk by chunk with dask.array."""
import functools
import os
import sys
import time

import numpy as np
import pytest

import prunekit as pk
from prunekit import distributed as dist

pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (a dependency of distributed)

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this test module

MODEL = functools.partial(pk.models.mlp, [20, 32, 4], seed=0)


def _sgd(ps):
    return pk.optim.SGD(ps, lr=0.1, momentum=0.9)


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 20)).astype(np.float32)
    return x, (x[:, :3].sum(1) > 0).astype(np.int64) + 2 * (x[:, 3] > 0)


def _dies_once(flag):
    """A model_fn whose first call on a worker after ``flag`` appears kills that worker's process."""
    try:
        os.remove(flag)
    except FileNotFoundError:
        return MODEL()
    os._exit(1)


class _KillAt(pk.train.Callback):
    def __init__(self, step, flag):
        self.step, self.flag = step, flag

    def on_batch_end(self, state):
        if state.step == self.step:
            open(self.flag, "w").close()


@pytest.fixture(scope="module")
def backend():
    t0 = time.perf_counter()
    # The workers must not inherit this process's BLAS threads: start them from a parent with 2.
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update({k: "2" for k in saved})
    try:
        b = dist.DaskBackend(n_workers=2, timeout_s=60)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        assert b.n_workers == 2 and time.perf_counter() - t0 < 120
        yield b
    finally:
        b.close()


def test_workers_run_one_blas_and_numba_thread_each(backend):
    from prunekit.distributed.dask_backend import WORKER_ENV
    env = backend.client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENV})
    assert len(env) == 2
    assert all(e == WORKER_ENV for e in env.values())


def _weights(trainer):
    return list(trainer.model.state_dict().values())


@pytest.mark.parametrize("options", [{}, {"compressor": dist.TopK(0.1), "error_feedback": True},
                                     {"backup_workers": 1}])
def test_dask_gives_the_simulators_weights(backend, options):
    x, y = _data()
    cluster = dist.Cluster(2, speeds=[1.0, 0.7])
    sim = dist.DataParallelTrainer(MODEL, _sgd, cluster, **options)
    sim_run = sim.fit((x, y), epochs=2, batch_size=64)
    options = {k: (type(v)(v.ratio) if k == "compressor" else v) for k, v in options.items()}
    real = dist.DataParallelTrainer(MODEL, _sgd, cluster, backend=backend, **options)
    real_run = real.fit((x, y), epochs=2, batch_size=64)
    for a, b in zip(_weights(sim), _weights(real)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(real_run.history["loss"], sim_run.history["loss"], rtol=1e-5)
    assert np.array_equal(real_run.bytes_sent, sim_run.bytes_sent)


def test_a_batch_smaller_than_the_cluster_leaves_the_empty_shards_at_zero(backend):
    x, y = _data(12)                                      # batches of 3 over 4 workers: one shard empty each step
    sim = dist.DataParallelTrainer(MODEL, _sgd, dist.Cluster(4))
    sim_run = sim.fit((x, y), epochs=1, batch_size=3)
    real = dist.DataParallelTrainer(MODEL, _sgd, dist.Cluster(4), backend=backend)
    real_run = real.fit((x, y), epochs=1, batch_size=3)
    assert np.isfinite(real_run.history["loss"]).all()
    np.testing.assert_allclose(real_run.history["loss"], sim_run.history["loss"], rtol=1e-5)
    for a, b in zip(_weights(sim), _weights(real)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_worker_killed_mid_task_loses_no_update(backend, tmp_path):
    x, y = _data()
    flag = str(tmp_path / "kill-now")
    model_fn = functools.partial(_dies_once, flag)
    sim = dist.DataParallelTrainer(MODEL, _sgd, dist.Cluster(2))
    sim.fit((x, y), epochs=1, batch_size=32)
    real = dist.DataParallelTrainer(model_fn, _sgd, dist.Cluster(2), backend=backend)
    t0 = time.perf_counter()
    run = real.fit((x, y), epochs=1, batch_size=32, callbacks=[_KillAt(3, flag)])
    assert time.perf_counter() - t0 < 180
    assert not os.path.exists(flag)                       # a worker did die in step 4
    assert run.timeline.n_steps == 8 and real.optimizer.steps == 8
    for a, b in zip(_weights(sim), _weights(real)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    deadline = time.time() + 60                           # the nanny restarts the dead worker
    while backend.n_workers < 2 and time.time() < deadline:
        time.sleep(0.5)


def test_unreachable_scheduler_fails_fast_and_clearly():
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"DaskBackend\(\): could not reach a Dask scheduler at 'tcp://127.0.0.1:9'"):
        dist.DaskBackend("tcp://127.0.0.1:9", timeout_s=2)
    assert time.perf_counter() - t0 < 30
    with pytest.raises(TypeError, match="client must be"):
        dist.DaskBackend(42)


def test_threshold_prune_chunked_matches_numpy():
    import dask.array as da

    x = np.random.default_rng(0).standard_normal((400, 300)).astype(np.float32)
    arr = da.from_array(x, chunks=(100, 100))
    res = dist.threshold_prune_chunked(arr, amount=0.9)
    assert res.array.numblocks == (4, 3)                          # still chunked, still lazy
    expected = np.where(np.abs(x) >= res.threshold, x, 0)
    np.testing.assert_array_equal(res.array.compute(scheduler="threads"), expected)
    assert abs(res.sparsity() - 0.9) < 1e-3
    exact = np.sort(np.abs(x).ravel())[int(0.9 * x.size)]
    assert abs(res.threshold - exact) < 1e-3 * np.abs(x).max() * 2   # within a bin or two of the exact cut
    fixed = dist.threshold_prune_chunked(x, threshold=1.0, chunks=(50, 300))
    np.testing.assert_array_equal(fixed.array.compute(scheduler="threads"), np.where(np.abs(x) >= 1, x, 0))
    assert dist.threshold_prune_chunked(x, amount=1.0, chunks=100).sparsity() == 1.0
    with pytest.raises(ValueError, match="threshold must be"):
        dist.threshold_prune_chunked(x, threshold=1.0, amount=0.5)
    with pytest.raises(ValueError, match="amount must be"):
        dist.threshold_prune_chunked(x, amount=1.5)
