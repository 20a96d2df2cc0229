import gc
import json
import os
from pathlib import Path

import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

REFS = Path(__file__).parent / "refs" / "ncps"


def load_ref(name: str) -> dict:
    """One recorded ncps case as a dict of NumPy arrays, plus ``meta`` (parsed JSON) and
    ``params`` (the state_dict, prefix ``param.`` stripped)."""
    z = np.load(REFS / f"{name}.npz")
    out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(str(z["meta_json"]))
    out["params"] = {k[len("param."):]: z[k] for k in z.files if k.startswith("param.")}
    return out


@pytest.fixture(scope="session")
def ref_loader():
    return load_ref


def _memory_maps() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's limit per process), where Linux says."""
    try:
        with open("/proc/self/maps") as f:
            count = sum(1 for _ in f)
        with open("/proc/sys/vm/max_map_count") as f:
            return count, int(f.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test file.

    Every XLA:CPU executable keeps about three memory mappings of JIT-compiled code for as long
    as a cache holds it. The whole suite compiles more than 20 000 executables, past Linux's
    default limit of 65 530 mappings per process (``vm.max_map_count``), and there LLVM's JIT
    does not raise: the process dies (SIGSEGV or abort) in whatever compiles next. Clearing the
    caches after each file keeps the count to one file's worth; the check after it turns a
    future leak (executables kept alive elsewhere) into a failure that says so."""
    yield
    jax.clear_caches()
    gc.collect()
    maps = _memory_maps()
    if maps is not None and maps[0] > maps[1] // 2:
        pytest.fail(f"{maps[0]} memory mappings are still held after this test file's compiled "
                    f"code was released (the limit is {maps[1]}, vm.max_map_count): something "
                    "keeps JAX executables alive across test files", pytrace=False)
