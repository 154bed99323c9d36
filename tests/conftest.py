import gc
import os
from pathlib import Path

import jax
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

# CI (.ci/run sets CI=1) draws the same hypothesis examples every run, so that main stays
# green on what was checked; elsewhere every run explores new examples (a failure prints
# the example and is kept in .hypothesis/ to replay).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Every XLA CPU executable keeps its machine code in memory maps of its own. A long test
# process compiles thousands of programs and would reach the kernel's limit of maps per
# process (vm.max_map_count, 65530 by default; test_model_cards alone leaves ~24,000), at
# which point XLA's compiler segfaults or aborts. Past MAP_BUDGET maps the compiled
# programs are dropped (they are compiled again when needed).
MAP_BUDGET = 30_000


def _n_maps() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _bounded_code_maps():
    yield
    if _n_maps() > MAP_BUDGET:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "conformance").is_dir():
        pytest.skip("../shared/conformance is absent")
    return SHARED
