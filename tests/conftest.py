"""Settings shared by every test: a headless matplotlib backend and hypothesis profiles."""
import os

# No display on CI: draw into memory. Notebook kernels started by nbval inherit this too.
os.environ.setdefault("MPLBACKEND", "Agg")

from hypothesis import settings  # noqa: E402

# Property tests stay quick; no deadline, since numba compiles on a kernel's first call.
settings.register_profile("default", deadline=None, max_examples=30)
# CI: the same examples on every run, so a red build is reproducible; print the failing blob.
settings.register_profile("ci", deadline=None, max_examples=30, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))


# Backends: `make test` runs the unit tests twice, the second time with PRUNEKIT_BACKEND=numpy.
# A test that exercises a numba kernel itself (kernel against reference, SIMD flavours, threads)
# is marked `@pytest.mark.numba`: it runs under the numba backend whatever the environment says,
# and is skipped where numba is not installed.
import importlib.util  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _backend_for_marked_tests(request):
    if request.node.get_closest_marker("numba") is None:
        yield
        return
    if importlib.util.find_spec("numba") is None:
        pytest.skip("needs numba")
    import prunekit

    with prunekit.backend("numba"):
        yield
