"""Accuracy on UEA/UCR archives: `liquidjax train --dataset ts` defaults next to 1-NN-DTW.

For each archive, one `liquidjax train --dataset ts --data-dir DIR --name NAME --cell CELL`
with every other flag at its default (so the figures are what a user gets), then the test
accuracy of the 1-nearest-neighbour classifier under full-window dynamic time warping (squared
point distance summed over channels, i.e. DTW_D for multivariate series; unequal lengths
aligned whole), computed here on the raw series — the baseline of the UCR/UEA archive papers
(Dau et al. 2019; Bagnall et al. 2018).

    python benchmarks/ts_archives.py --data-dir ~/aeon/datasets/data           # the defaults
    python benchmarks/ts_archives.py --data-dir D --cell cfc --seeds 0,1,2     # three seeds
    python benchmarks/ts_archives.py --data-dir D --name GunPoint --cell ltc   # one
    python benchmarks/ts_archives.py --data-dir D --dtw-only                   # the baseline

Writes `benchmarks/results/ts_archives.json` (merged with earlier runs) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from liquidjax.data import find_ts_files, read_ts

ARCHIVES = ("ItalyPowerDemand", "GunPoint", "ArrowHead", "BasicMotions", "Covid3Month_disc",
            "PickupGestureWiimoteZ", "JapaneseVowels", "OSULeaf", "ACSF1", "UnitTest")
RESULTS = Path(__file__).parent / "results" / "ts_archives.json"


def dtw_1nn_accuracy(train, test, chunk: int = 64) -> float:
    """Test accuracy of 1-NN under full-window DTW, vectorised over (test, train) pairs."""
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


def run(data_dir: str, name: str, cell: str, seed: int, out_root: Path) -> dict:
    out = out_root / f"{name}-{cell}-s{seed}"
    cmd = [sys.executable, "-m", "liquidjax", "train", "--dataset", "ts", "--data-dir", data_dir,
           "--name", name, "--cell", cell, "--seed", str(seed), "--out-dir", str(out),
           "--progress", "none"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    test = [e for e in events if e["event"] == "test"][-1]
    return {"test_accuracy": test["test_accuracy"], "wall_s": round(time.time() - t0, 1),
            "recipe": start.get("recipe"), "patch_length":
            start["data_config"].get("patch_length"), "epochs": start["train_config"]["epochs"],
            "command": f"liquidjax train --dataset ts --data-dir DIR --name {name} --cell {cell}"}


def _cell_text(row: dict, cell: str) -> str:
    """The test accuracy of each seed, ``a / b / c``, bold where at or above 1-NN-DTW."""
    if cell not in row:
        return "–"
    seeds = row[cell].get("seeds") or {"0": row[cell]["test_accuracy"]}
    # Rounded as stored: equal counts of correct series are a tie, not a miss.
    return " / ".join(f"**{a:.3f}**" if round(a, 4) >= round(row["dtw_1nn"], 4) else f"{a:.3f}"
                      for _, a in sorted(seeds.items(), key=lambda kv: int(kv[0])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder of NAME/NAME_TRAIN.ts files")
    ap.add_argument("--name", action="append", help=f"archives (default: {', '.join(ARCHIVES)})")
    ap.add_argument("--cell", action="append", choices=("cfc", "ltc"))
    ap.add_argument("--seeds", default="0", help="comma-separated --seed values (default 0)")
    ap.add_argument("--dtw-only", action="store_true")
    ap.add_argument("--out", default="runs/bench_ts")
    args = ap.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.name or ARCHIVES:
        row = results.setdefault(name, {})
        train_path, test_path = find_ts_files(args.data_dir, name)
        train = read_ts(train_path)
        test = read_ts(test_path, class_names=train.class_names or None)
        row["shape"] = f"{len(train)} / {len(test)}, {int(train.lengths.max())} × " \
                       f"{train.num_channels}"
        if "dtw_1nn" not in row:
            row["dtw_1nn"] = dtw_1nn_accuracy(train, test)
        for cell in [] if args.dtw_only else args.cell or ("cfc", "ltc"):
            seeds = {}
            for seed in (int(s) for s in args.seeds.split(",")):
                info = run(args.data_dir, name, cell, seed, Path(args.out))
                seeds[str(seed)] = info.pop("test_accuracy")
            row[cell] = {**info, "seeds": seeds,
                         "test_accuracy": round(sum(seeds.values()) / len(seeds), 4)}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print("\n| archive | train / test, length × channels | CfC (per seed) | LTC (per seed) "
          "| 1-NN-DTW |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in results.items():
        cfc, ltc = (_cell_text(row, c) for c in ("cfc", "ltc"))
        print(f"| {name} | {row['shape']} | {cfc} | {ltc} | {row['dtw_1nn']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
