"""Accuracy benchmark: liquid models on Fashion-MNIST, through the real `liquidjax train` path.

Each recipe is one `liquidjax train` command (so the figures are what a user gets); the script
reads the run's `metrics.jsonl` and prints test accuracy, best validation accuracy and the time
per epoch. Data: Debian's `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`).

    python benchmarks/fashion_mnist.py                     # every image recipe
    python benchmarks/fashion_mnist.py --recipe cfc_rows   # one
    python benchmarks/fashion_mnist.py --quick             # 1 epoch each, 6k examples (smoke)

Reference points (BENCHMARKS.md, ncps 1.0.1 on this machine, 15 epochs): CfC-64 80.9 % in 422 s,
CfC-64 + mixed memory 90.2 % in 693 s. Fashion-MNIST board best recurrent entry: 89.7 %.
Targets (issue 3): row-wise liquid model ≥ 90.5 %, conv stem + liquid ≥ 93.5 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from liquidjax.recipes import RECIPES

DATA = "/usr/share/datasets/fashion-mnist"
COMMON = ["--dataset", "fashion_mnist", "--data-dir", DATA, "--progress", "plain"]

# The recipes are liquidjax's own (liquidjax.recipes): the command line and this script share them.
IMAGE_RECIPES = tuple(n for n, r in RECIPES.items() if r.data == "images")
# Run by default: the recipes that read images by rows (or a conv stem). Pixel sequences (784
# steps per image) are a run for an accelerator: name them with --recipe.
DEFAULT_RECIPES = tuple(n for n in IMAGE_RECIPES
                        if RECIPES[n].settings.get("sequence", "rows") != "pixels")


def run(name: str, out_root: Path, quick: bool) -> dict:
    out = out_root / name
    cmd = [sys.executable, "-m", "liquidjax", "train", *COMMON, "--recipe", name,
           "--out-dir", str(out)]
    if quick:
        cmd += ["--epochs", "1", "--limit-examples", "6000"]
    if any((out / "checkpoints").glob("*.ljx")):  # --resume needs a checkpoint
        cmd.append("--resume")
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["event"] == "epoch"]
    test = [e for e in events if e["event"] == "test"][-1]
    start = [e for e in events if e["event"] == "start"][0]
    return {
        "recipe": name,
        "recipe_version": RECIPES[name].version,
        "epochs": len(epochs),
        "test_accuracy": test["test_accuracy"],
        "best_val_accuracy": max(e["val_accuracy"] for e in epochs),
        "s_per_epoch": sum(e["train_time_s"] for e in epochs) / len(epochs),
        "train_s": sum(e["train_time_s"] for e in epochs),
        "wall_s": wall,
        "devices": len(start["devices"]),
        "command": " ".join(cmd),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", action="append", choices=sorted(IMAGE_RECIPES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_fashion")
    args = ap.parse_args()
    if not Path(DATA).is_dir():
        print(f"{DATA} not found: apt-get install dataset-fashion-mnist", file=sys.stderr)
        return 1
    results = [run(n, Path(args.out), args.quick) for n in args.recipe or DEFAULT_RECIPES]
    print("\n| recipe | epochs | test acc | best val acc | s / epoch (train) | devices |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['recipe']} | {r['epochs']} | {100 * r['test_accuracy']:.2f} % | "
              f"{100 * r['best_val_accuracy']:.2f} % | {r['s_per_epoch']:.1f} | {r['devices']} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    # Keep the figures of recipes not run this time; replace those that were.
    path = Path(args.out) / "results.json"
    earlier = json.loads(path.read_text()) if path.exists() else []
    ran = {r["recipe"] for r in results}
    path.write_text(json.dumps([r for r in earlier if r["recipe"] not in ran] + results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
