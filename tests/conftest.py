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
