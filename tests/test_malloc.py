"""prunekit._malloc: after the first backward(), glibc keeps the freed step buffers for the next step.

Without it a LeNet-5 step at batch 128 took 2,200-2,700 page faults (the freed im2col
columns and activations went back to the OS and were touched again); with it, none.
Each test starts a fresh interpreter, since the thresholds are process-wide.
"""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")

STEPS = textwrap.dedent("""
    import resource
    import numpy as np
    import prunekit as pk
    from prunekit import _malloc
    print("BEFORE", _malloc.status()["reason"])
    model = pk.models.lenet5(seed=0)
    opt = pk.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = pk.Tensor(rng.random((64, 1, 28, 28), dtype=np.float32))
    y = rng.integers(0, 10, 64)
    def step():
        opt.zero_grad()
        loss = pk.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    losses = [step() for _ in range(5)]
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    losses += [step() for _ in range(10)]
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
    st = _malloc.status()
    print("STATUS", st["installed"], "|", st["reason"])
    print("FAULTS", faults, "FINITE", bool(np.isfinite(losses).all()))
""")


def _run(**env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "PRUNEKIT_MALLOC"))}
    full.update({"PYTHONPATH": ROOT, **env})
    proc = subprocess.run([sys.executable, "-c", STEPS], env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@glibc
def test_after_the_first_backward_a_training_step_reuses_its_buffers():
    out = _run()
    assert "BEFORE not tried yet" in out, out                     # importing prunekit changes nothing
    assert "STATUS True" in out and "trim threshold 256 MiB" in out, out
    faults = float(out.split("FAULTS", 1)[1].split()[0])
    assert faults < 100, f"a step still maps fresh pages: {faults:.0f} page faults a step\n{out}"
    assert "FINITE True" in out, out


def test_can_be_switched_off_and_respects_a_users_setting():
    off = _run(PRUNEKIT_MALLOC="0")
    assert "STATUS False | disabled by PRUNEKIT_MALLOC=0" in off, off
    mine = _run(MALLOC_TRIM_THRESHOLD_="1048576")
    assert "STATUS False | MALLOC_TRIM_THRESHOLD_ set by you" in mine, mine
    tunable = _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert "STATUS False | GLIBC_TUNABLES set by you" in tunable, tunable
