import json
import os
from pathlib import Path

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
