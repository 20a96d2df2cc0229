"""The ``liquidjax`` command line: usage errors (exit 2, valid names listed, no traceback), data
errors (exit 1, the data module's message), train → checkpoints/metrics/plot → evaluate."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liquidjax.cli import main
from liquidjax.train import list_checkpoints, read_header, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--units", "8", "--backbone-units", "8", "--batch-size", "8", "--progress", "plain"]


def _write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """Tiny Fashion-MNIST-layout IDX files: 8×8 images whose class is the bright quadrant."""
    d = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 80), ("t10k", 24)):
        y = rng.integers(0, 4, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 8, 8)).astype(np.uint8)
        for i, c in enumerate(y):
            r, s = divmod(int(c), 2)
            x[i, 4 * r:4 * r + 4, 4 * s:4 * s + 4] += 180
        _write_idx(d / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(d / f"{prefix}-labels-idx1-ubyte", y)
    return d


def _run_main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--dataset", "imagenet"], "cifar10, mnist, fashion_mnist, irregular_sine"),
    (["train", "--cell", "gru"], "expected one of: cfc, ltc"),
    (["train", "--wiring", "star"], "expected one of: fc, ncp, autoncp, random"),
    (["train", "--solver", "rk4"], "fused, euler, heun"),
    (["train", "--sequence", "diagonal"], "rows, pixels, patches"),
    (["train", "--model", "vit"], "sequence, conv"),
    (["train", "--conv-stem", "resnet"], "expected one of: strided, pooled"),
    (["train", "--augment-padding", "-1"], "expected an integer >= 0, got -1"),
    (["train", "--ema", "1"], "expected a number in (0.0, 1.0)"),
    (["train", "--model", "conv", "--conv-stem", "pooled", "--conv-channels", "8,8,8,8,8,8,8,8,8"],
     "shrinks an image"),
    (["train", "--units", "0"], "expected an integer >= 1, got 0"),
    (["train", "--conv-channels", "4,x"], "expected comma-separated integers"),
    (["train", "--lr", "-1"], "expected a number in (0.0, inf)"),
    (["train", "--epochs", "two"], "expected an integer, got 'two'"),
    (["train", "--dataset", "irregular_sine", "--solver", "tsit5"],
     "applies only to ODE cells (ltc, ctrnn, gruode, gruode_bayes, odernn, ncde)"),
    (["train", "--dataset", "two_spirals", "--model", "conv"], "needs an image dataset"),
    (["evaluate", "x.ljx", "--split", "dev"], "expected one of: test, val, train"),
    (["fit"], "invalid choice: 'fit'"),
    (["train", "--dataset", "mnist", "--patch-length", "4"],
     "--patch-length applies to --dataset ts only, not --dataset mnist: drop it"),
    (["train", "--name", "GunPoint", "--missing=zero"],
     "--name, --missing apply to --dataset ts only, not --dataset cifar10: drop them"),
    (["train", "--dataset", "ts", "--cell", "grud", "--missing", "path"],
     "--cell grud reads [x~ | m | delta] blocks (liquidjax.data.missing_value_features): use "
     "--missing features (got --missing path)"),
    (["train", "--dataset", "ts", "--cell", "gruode_bayes"],
     "--cell gruode_bayes reads [x | m] blocks (values and observation mask): use --missing "
     "path (got --missing features)"),
    (["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2"],
     "a multi-host run needs --coordinator HOST:PORT, --num-processes N and --process-id I"),
    (["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "(0 <= I < N)"),
])
def test_usage_errors_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_main(argv, capsys)
    assert code == 2
    assert expected in err


def test_help(capsys):
    code, out, _ = _run_main(["train", "--help"], capsys)
    assert code == 0 and "--dataset" in out and "--resume" in out


def test_data_unavailable_subprocess(tmp_path):
    """``liquidjax train`` (CIFAR-10 by default) with no data: the clear message, exit 1."""
    exe = ROOT / ".venv" / "bin" / "liquidjax"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "liquidjax"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        cmd + ["train", "--data-dir", str(tmp_path / "empty"), "--no-download",
               "--out-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()  # the message, the places and the remedies
    assert line.startswith("liquidjax train: error: dataset 'cifar10'")
    assert "Looked in:" in line and "Options: 1. " in line
    assert "--data-dir" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_corrupt_data_exit_1(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte", np.zeros((10, 8, 8), np.uint8), gz=False)
    _write_idx(d / "train-labels-idx1-ubyte", np.zeros(10, np.uint8), gz=False)
    _write_idx(d / "t10k-images-idx3-ubyte", np.zeros((4, 8, 8), np.uint8), gz=False)
    _write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])  # truncated
    code, _, err = _run_main(["train", "--dataset", "mnist", "--data-dir", str(d),
                              "--no-download", "--out-dir", str(tmp_path / "r")], capsys)
    assert code == 1
    assert "train-images-idx3-ubyte" in err and "truncated" in err


def test_train_evaluate_resume_end_to_end(idx_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fashion_mnist", "--data-dir", str(idx_dir), "--epochs", "2",
            "--lr", "0.02", "--val-fraction", "0.2", "--out-dir", str(out), *SMALL]
    code, stdout, err = _run_main(argv, capsys)
    assert code == 0, err
    assert "test accuracy" in stdout and "epoch 2/2" in err
    ckpts = list_checkpoints(out / "checkpoints")
    assert read_header(ckpts[-1])["step"] == 16  # 64 training examples / 8, two epochs
    header = read_header(ckpts[-1])
    assert header["data_config"]["dataset"] == "fashion_mnist"
    assert header["model_config"]["input_size"] == 8
    # images get the default row-wise recipe (explicit flags win), recorded in the run
    assert header["recipe"] == "cfc_rows@1" and header["model_config"]["mixed_memory"]
    assert header["model_config"]["units"] == 8
    assert "per epoch (8 steps of" in err  # the epoch-time estimate, before the epoch ends
    assert (out / "curves.png").exists()
    recs = read_metrics(out / "metrics.jsonl")
    test_rec = [r for r in recs if r["event"] == "test"][-1]
    assert test_rec["test_examples"] == 24

    # evaluate: the same test accuracy as reported at the end of training
    code, stdout, err = _run_main(["evaluate", str(out), "--split", "test"], capsys)
    assert code == 0, err
    acc = float(stdout.split("accuracy ")[1].split(",")[0])
    assert acc == pytest.approx(test_rec["test_accuracy"], abs=1e-4)
    assert "24 examples" in stdout
    code, stdout, err = _run_main(["evaluate", str(ckpts[-1]), "--split", "val"], capsys)
    assert code == 0 and "16 examples" in stdout, err
    # an explicit --data-dir is used or the command fails naming it (never another copy)
    code, _, err = _run_main(["evaluate", str(out), "--data-dir", str(tmp_path / "nowhere"),
                              "--no-download"], capsys)
    assert code == 1 and f"data dir given ({tmp_path / 'nowhere'}) does not exist" in err

    # never overwrite a run by accident; resume must match the training settings
    code, _, err = _run_main(argv, capsys)
    assert code == 1 and "already holds checkpoints" in err and "--resume" in err
    code, _, err = _run_main([*argv[:-len(SMALL)], *SMALL, "--lr", "0.5", "--resume"], capsys)
    assert code == 1 and "learning_rate: checkpoint has 0.02, requested 0.5" in err
    code, _, err = _run_main([*argv, "--augment", "--resume"], capsys)
    assert code == 1 and "augment: checkpoint has False, requested True" in err
    # a checkpoint written before a config field existed (here: conv_stem, conv_dropout, and
    # the data's augment_padding) still resumes: the defaults reproduce it
    old_dir = tmp_path / "old"
    (old_dir / "checkpoints").mkdir(parents=True)
    for ck in ckpts:
        dst = old_dir / "checkpoints" / ck.name
        dst.write_bytes(ck.read_bytes())
        _strip_header_fields(dst, model=("conv_stem", "conv_dropout"), data=("augment_padding",))
    old_argv = [*argv[:argv.index("--out-dir")], "--out-dir", str(old_dir), *SMALL]
    code, _, err = _run_main([*old_argv, "--resume"], capsys)
    assert code == 0 and "resumed from" in err, err
    # already complete: no new steps; the crop padding is irrelevant without --augment
    code, stdout, err = _run_main([*argv, "--augment-padding", "2", "--resume"], capsys)
    assert code == 0 and "resumed from" in err
    assert list_checkpoints(out / "checkpoints")[-1] == ckpts[-1]

    # a corrupt newest checkpoint under --resume names the older ones that verify
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    for ck in ckpts:
        (broken / "checkpoints" / ck.name).write_bytes(ck.read_bytes())
    newest = broken / "checkpoints" / ckpts[-1].name
    raw = newest.read_bytes()
    newest.write_bytes(raw[:100] + bytes([raw[100] ^ 4]) + raw[101:])
    code, _, err = _run_main([*argv[:argv.index("--out-dir")], "--out-dir", str(broken), *SMALL,
                              "--resume"], capsys)
    assert code == 1 and "checksum mismatch" in err, err
    assert f"the checkpoints beside it that verify are {ckpts[-2].name}" in err
    # malformed headers (a valid checksum over wrong types) are refused, not a traceback
    header_of = json.loads
    from liquidjax.train._checkpoint import MAGIC
    n = struct.unpack("<Q", raw[len(MAGIC):len(MAGIC) + 8])[0]
    start = len(MAGIC) + 8 + 32
    header = header_of(raw[start:start + n])
    for i, (edit, msg) in enumerate((
        (lambda h: h["data_config"].update(mean="x"), "unusable data settings in its header"),
        (lambda h: h.update(data_config=[1]), "data_config in its header is [1]"),
        (lambda h: h.update(model_config=7), "no usable model config"),
    )):
        h = json.loads(json.dumps(header))
        edit(h)
        head = json.dumps(h).encode()
        bad = tmp_path / f"malformed{i}.ljx"
        bad.write_bytes(MAGIC + struct.pack("<Q", len(head)) + hashlib.sha256(head).digest()
                        + head + raw[start + n:])
        code, _, err = _run_main(["evaluate", str(bad)], capsys)
        assert code == 1 and msg in err, err

    # a corrupt checkpoint is reported with its name, exit 1
    bad = tmp_path / "bad.ljx"
    raw = ckpts[-1].read_bytes()
    bad.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    code, _, err = _run_main(["evaluate", str(bad)], capsys)
    assert code == 1 and "bad.ljx" in err and "checksum" in err


@pytest.mark.slow
def test_conv_model(idx_dir, tmp_path, capsys):
    code, stdout, err = _run_main(
        ["train", "--dataset", "fashion_mnist", "--data-dir", str(idx_dir), "--model", "conv",
         "--conv-channels", "4,6", "--conv-stem", "pooled", "--conv-dropout", "0.1",
         "--augment", "--augment-padding", "1", "--label-smoothing", "0.1",
         "--max-steps", "2", "--limit-examples", "16",
         "--out-dir", str(tmp_path / "conv"), *SMALL], capsys)
    assert code == 0, err
    header = read_header(list_checkpoints(tmp_path / "conv" / "checkpoints")[-1])
    cfg = header["model_config"]
    assert cfg["kind"] == "conv" and cfg["image_shape"] == [8, 8, 1]
    assert cfg["conv_channels"] == [4, 6]
    assert cfg["conv_stem"] == "pooled" and cfg["conv_dropout"] == 0.1
    assert header["train_config"]["label_smoothing"] == 0.1
    assert header["data_config"]["augment"] and header["data_config"]["augment_padding"] == 1


@pytest.mark.slow
def test_ltc_ncp_synthetic(tmp_path, capsys):
    out = tmp_path / "ltc"
    code, stdout, err = _run_main(
        ["train", "--dataset", "two_spirals", "--cell", "ltc", "--wiring", "ncp",
         "--solver", "fused", "--ode-unfolds", "2", "--limit-examples", "32", "--epochs", "1",
         "--out-dir", str(out), *SMALL], capsys)
    assert code == 0, err
    header = read_header(list_checkpoints(out / "checkpoints")[-1])
    assert header["model_config"]["solver"] == "fused"
    assert header["model_config"]["wiring"] == "ncp"
    code, stdout, err = _run_main(["evaluate", str(out), "--split", "test",
                                   "--batch-size", "16", "--limit-examples", "32"], capsys)
    assert code == 0 and "two_spirals test: accuracy" in stdout, err
    json.dumps(header)  # the header is plain JSON


def test_liquid_s4_pixels_recipe_trains_and_evaluates(idx_dir, tmp_path, capsys):
    # --cell liquid_s4 through the recipe (pixel sequences: 64 steps x 1), shrunk by flags
    out = tmp_path / "s4"
    code, stdout, err = _run_main(
        ["train", "--dataset", "fashion_mnist", "--data-dir", str(idx_dir), "--recipe",
         "liquid_s4_pixels", "--units", "8", "--layers", "1", "--ssm-size", "4",
         "--batch-size", "16", "--epochs", "1", "--out-dir", str(out), "--progress", "plain"],
        capsys)
    assert code == 0, err
    assert "test accuracy" in stdout and "liquid_s4" in err
    header = read_header(list_checkpoints(out / "checkpoints")[-1])
    assert header["recipe"] == "liquid_s4_pixels@1" and header["step"] == 4  # 64 // 16
    assert header["model_config"]["cell"] == "liquid_s4"
    assert header["model_config"]["input_size"] == 1 and header["model_config"]["units"] == 8
    assert header["data_config"]["sequence"] == "pixels"
    assert header["train_config"]["ssm_learning_rate"] == 1e-3
    code, stdout, err = _run_main(["evaluate", str(out), "--split", "test"], capsys)
    assert code == 0 and "24 examples" in stdout, err
    code, _, err = _run_main(["train", "--cell", "liquid_s4", "--mixed-memory"], capsys)
    assert code == 2 and "drop mixed_memory" in err


def test_main_restores_the_run_time_error_mode(monkeypatch, capsys, tmp_path):
    """On several devices train and evaluate switch equinox's run-time errors to NaN; an
    in-process ``main`` must hand the process back as it found it, however the run ends. (The
    suite's process has one device, so a real run would not switch it: the switch is forced.)"""
    import equinox._errors as eqx_errors

    import liquidjax.cli as cli
    from liquidjax.cli import _devices
    from liquidjax.cli._errors import CliError

    mode = eqx_errors.EQX_ON_ERROR

    def switched_then(code):
        def run(args):
            with _devices.run_time_errors_as_nan():
                assert eqx_errors.EQX_ON_ERROR == "nan"
                if code is None:
                    raise CliError("the run failed")
                return code
        return run

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's runs/
    for name, code in (("train_command", 0), ("evaluate_command", None)):
        # main dispatches through the package's names: patch those (a real run must not start)
        monkeypatch.setattr(cli, name, switched_then(code))
        argv = (["train", "--dataset", "two_spirals"] if name == "train_command"
                else ["evaluate", "no-such-run"])
        assert _run_main(argv, capsys)[0] == (0 if code == 0 else 1)
        assert eqx_errors.EQX_ON_ERROR == mode
    assert not (tmp_path / "runs").exists()  # the patched commands ran, not real ones


def test_ema_is_trained_tested_and_evaluated(tmp_path, capsys):
    import equinox._errors as eqx_errors

    mode = eqx_errors.EQX_ON_ERROR
    out = tmp_path / "ema"
    code, stdout, err = _run_main(
        ["train", "--dataset", "two_spirals", "--limit-examples", "64", "--epochs", "2",
         "--ema", "0.9", "--out-dir", str(out), *SMALL], capsys)
    assert code == 0, err
    assert "(raw weights " in err  # each epoch's line shows the last iterate's accuracy too
    tested = re.search(r"test accuracy (\S+) \(loss (\S+),", stdout)
    assert tested, stdout
    assert read_header(list_checkpoints(out / "checkpoints")[-1])["train_config"]["ema"] == 0.9
    assert eqx_errors.EQX_ON_ERROR == mode  # an in-process run leaves the error mode as found
    losses = {}
    for flag in ([], ["--no-ema"]):
        code, stdout, err = _run_main(["evaluate", str(out), "--split", "test",
                                       "--limit-examples", "64", "--batch-size", "8", *flag],
                                      capsys)
        assert code == 0, err
        losses[bool(flag)] = re.search(r"loss (\S+) \(", stdout).group(1)
    assert losses[False] == tested.group(2)  # evaluate reads the average, as the run tested
    assert losses[True] != losses[False]


def _strip_header_fields(path, *, model=(), data=()):
    """Rewrite a checkpoint as one written before these header fields existed (the header is
    length-prefixed, checksummed JSON after the magic bytes; the payload is unchanged)."""
    from liquidjax.train._checkpoint import MAGIC

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8 + 32
    header = json.loads(raw[start:start + n])
    for k in model:
        header["model_config"].pop(k)
    for k in data:
        header["data_config"].pop(k)
    head = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(MAGIC + struct.pack("<Q", len(head)) + hashlib.sha256(head).digest() + head
                     + raw[start + n:])


# ------------------------------------------------------------- every failure one `error:` line
CLI_DRIVER = """
import contextlib, io, json, sys, traceback
from liquidjax.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except BaseException:
            code = None
            err.write(traceback.format_exc())
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print("RESULT" + json.dumps(results))
"""


def run_cli_cases(tmp_path, cases, *, env=None, timeout=300):
    """Run ``liquidjax`` on each ``(argv, code, message)`` in ONE subprocess (each start costs
    seconds) and check: the exit code, a line ``liquidjax <command>: error: ...<message>``, and
    no traceback."""
    script = tmp_path / "cli_driver.py"
    script.write_text(CLI_DRIVER)
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **(env or {}))
    e.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(script), json.dumps([c[0] for c in cases])],
                          capture_output=True, text=True, timeout=timeout, env=e, cwd=tmp_path)
    assert proc.returncode == 0 and "RESULT" in proc.stdout, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULT", 1)[1])
    for (argv, code, message), r in zip(cases, results):
        text = r["out"] + r["err"]
        assert "Traceback" not in text, (argv, text)
        lines = [ln for ln in r["err"].splitlines()
                 if ln.startswith(f"liquidjax {argv[0]}: error: ")]
        assert r["code"] == code and len(lines) == 1, (argv, r)
        assert message in r["err"], (argv, message, r["err"])
        # one line: nothing but the usage line, progress notes and the error itself
        assert all(ln.startswith(("usage: ", "liquidjax")) for ln in r["err"].splitlines()
                   if ln.strip()), (argv, r["err"])
    return results


def test_run_time_failures_are_one_line(idx_dir, tmp_path):
    """Issue 13: every class of mistake (data, sizes, out dirs) is one `liquidjax <cmd>: error:`
    line, exit 1 (2 for a flag at fault), no traceback; one subprocess for all of them."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    fm = ["train", "--dataset", "fashion_mnist", "--no-download", *SMALL]
    bad_ckpt_dir = tmp_path / "ckfile"
    bad_ckpt_dir.mkdir()
    (bad_ckpt_dir / "checkpoints").write_text("")
    test_only, constant = tmp_path / "test-only", tmp_path / "constant"
    for d in (test_only, constant):
        d.mkdir()
        _write_idx(d / "t10k-images-idx3-ubyte", np.zeros((4, 8, 8), np.uint8))
        _write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    _write_idx(constant / "train-images-idx3-ubyte", np.full((20, 8, 8), 7, np.uint8))
    _write_idx(constant / "train-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 4)
    data = [*fm, "--data-dir", str(idx_dir)]
    run_cli_cases(tmp_path, [
        ([*fm, "--data-dir", str(test_only), "--out-dir", "r"], 1,
         f"{test_only} holds fashion_mnist files, but not its 'train' split"),
        ([*fm, "--data-dir", str(constant), "--out-dir", "r"], 1,
         "the training images are constant in channel(s) [0] (every pixel [7] of 255"),
        ([*data, "--batch-size", "4096", "--out-dir", "r"], 2,
         "--batch-size 4096 is larger than the fashion_mnist training split after the validation "
         "hold-out (72 examples); pass --batch-size 72 or less"),
        ([*data, "--sequence", "patches", "--patch-size", "3", "--out-dir", "r"], 2,
         "--patch-size 3: patch_size 3 must divide the image size 8×8"),
        ([*data, "--units", "1000000000", "--out-dir", "r"], 2, "GiB for the parameters"),
        ([*data, "--layers", "100000", "--out-dir", "r"], 2, "beyond the limit of 64"),
        ([*data, "--cell", "ltc", "--ode-unfolds", "100000000", "--out-dir", "r"], 2,
         "--ode-unfolds 100000000 is beyond the limit of 1000"),
        (["train", "--cpu-devices", "100000"], 2, "--cpu-devices 100000 is beyond the limit"),
        ([*fm, "--data-dir", str(tmp_path / "nonexistent" / "x"), "--out-dir", "r1"], 1,
         f"data dir given ({tmp_path / 'nonexistent' / 'x'}) does not exist"),
        ([*fm, "--data-dir", str(idx_dir), "--out-dir", str(a_file)], 1,
         f"run directory: {a_file} is a file, not a folder"),
        ([*fm, "--data-dir", str(idx_dir), "--out-dir", str(bad_ckpt_dir)], 1,
         f"run directory: {bad_ckpt_dir / 'checkpoints'} is a file, not a folder"),
        ([*fm, "--data-dir", str(tmp_path / "nonexistent"), "--out-dir", "new/run"], 1,
         "does not exist"),
    ])
    # failed runs leave no run folder behind (those they found are left as they were)
    assert not any((tmp_path / d).exists() for d in ("r", "r1", "new"))
    assert a_file.is_file() and (bad_ckpt_dir / "checkpoints").is_file()


def test_help_lists_every_model_config_field(capsys):
    import dataclasses

    from liquidjax.models import ModelConfig

    code, out, _ = _run_main(["train", "--help"], capsys)
    assert code == 0
    for f in dataclasses.fields(ModelConfig):
        flag = "--" + f.name.replace("_", "-") if f.name != "kind" else "--model"
        assert flag in out, f"{f.name}: {flag} missing from `liquidjax train --help`"


def _model_config_from(argv):
    from liquidjax._config_args import config_values
    from liquidjax.cli import build_parser
    from liquidjax.models import ModelConfig

    args = build_parser().parse_args(["train", *argv])
    values = config_values(args, ModelConfig)
    values.update(input_size=values["input_size"] or 2, num_classes=values["num_classes"] or 3,
                  task=values["task"] or "classification", target_size=values["target_size"] or 1,
                  stem_pool=values["stem_pool"] or 1)  # data-dependent defaults, as the CLI's
    return ModelConfig(**values)


def test_every_field_is_settable_from_the_command_line():
    cfg = _model_config_from([
        "--kind", "sequence", "--image-shape", "8,8,1", "--input-size", "8", "--num-classes", "5",
        "--task", "regression", "--per-step", "--target-size", "2", "--predict-variance",
        "--cell", "ltc", "--units", "9", "--wiring", "random", "--motor-neurons", "3",
        "--sparsity", "0.3", "--wiring-seed", "7", "--layers", "2", "--readout", "mean",
        "--dropout", "0.1", "--mixed-memory", "--solver", "TSIT5", "--ode-unfolds", "3",
        "--adaptive-tol", "1e-4", "--no-implicit-param-constraints", "--ltc-init", "ncps",
        "--interpolation", "cubic",
        "--cfc-mode", "no-gate", "--activation", "silu", "--backbone-units", "5",
        "--backbone-layers", "0", "--backbone-dropout", "0.2", "--conv-channels", "4,6",
        "--conv-sequence", "columns", "--conv-stem", "pooled", "--conv-dropout", "0.3",
        "--ensemble", "3", "--ssm-size", "6", "--liquid-order", "3", "--liquid-kernel", "kb",
        "--discretisation", "bilinear", "--ssm-init", "inv", "--no-glu", "--ssm-dropout", "0.1",
        "--target-mean", "0.5,1", "--target-std", "2,3",
        "--stem-channels", "none", "--stem-pool", "1", "--no-stem-gap",  # (a stem: no per_step)
        "--rocket-features", "0", "--rocket-length", "5",
    ])
    want = dict(kind="sequence", task="regression", per_step=True, target_size=2,
                predict_variance=True, image_shape=(8, 8, 1), input_size=8, num_classes=5,
                cell="ltc",
                units=9, wiring="random", motor_neurons=3, sparsity=0.3, wiring_seed=7, layers=2,
                readout="mean", dropout=0.1, mixed_memory=True, solver="tsit5", ode_unfolds=3,
                adaptive_tol=1e-4, implicit_param_constraints=False, ltc_init="ncps",
                interpolation="cubic",
                cfc_mode="no_gate", activation="silu", backbone_units=5, backbone_layers=0,
                backbone_dropout=0.2, conv_channels=(4, 6), conv_sequence="columns",
                conv_stem="pooled", conv_dropout=0.3, ensemble=3, ssm_size=6, liquid_order=3,
                liquid_kernel="kb", discretisation="bilinear", ssm_init="inv", glu=False,
                ssm_dropout=0.1, target_mean=(0.5, 1.0), target_std=(2.0, 3.0),
                stem_channels=None, stem_pool=1, stem_gap=False, rocket_features=0,
                rocket_length=5)
    import dataclasses

    assert set(want) == {f.name for f in dataclasses.fields(cfg)}  # the test covers them all
    assert cfg.to_dict() == want


@pytest.mark.parametrize("argv, expected", [
    (["--adaptive-tol", "0"], "expected a number in (0.0, inf), got 0.0"),
    (["--sparsity", "1"], "expected a number in [0.0, 1.0), got 1.0"),
    (["--activation", "swish"], "expected one of: lecun_tanh, silu"),
    (["--interpolation", "spline"], "expected one of: hold, linear, cubic"),
    (["--image-shape", "8,8"], "expected 3 comma-separated integers"),
])
def test_model_flag_errors(argv, expected, capsys):
    code, _, err = _run_main(["train", *argv], capsys)
    assert code == 2 and expected in err


def test_adaptive_tol_from_the_command_line_runs_adaptively():
    # `--solver tsit5 --adaptive-tol` must reach the solver: the tolerance changes the answer,
    # and tightening it converges (a constant-step solve would ignore it).
    import equinox as eqx
    import jax

    from liquidjax.models import build_model

    xs = 3.0 * jax.random.normal(jax.random.key(1), (5, 2))
    out = {}
    for tol in ("1e-1", "1e-6", "1e-7"):
        # ncps's initial ranges: fast neurons, so the tolerance visibly matters
        cfg = _model_config_from(["--cell", "ltc", "--units", "6", "--solver", "tsit5",
                                  "--ode-unfolds", "1", "--adaptive-tol", tol,
                                  "--ltc-init", "ncps"])
        model = build_model(cfg, key=jax.random.key(0))
        out[tol] = np.asarray(eqx.filter_jit(model)(xs))
    coarse = np.max(np.abs(out["1e-1"] - out["1e-7"]))
    fine = np.max(np.abs(out["1e-6"] - out["1e-7"]))
    assert coarse > 1e-4 and fine < coarse / 10, (coarse, fine)


@pytest.mark.slow
def test_given_sizes_must_match_the_data(tmp_path, capsys):
    code, _, err = _run_main(["train", "--dataset", "two_spirals", "--input-size", "5",
                              "--out-dir", str(tmp_path / "x"), *SMALL], capsys)
    assert code == 2 and "--input-size 5 does not match the data (2)" in err


def test_documented_train_commands_parse():
    # Every `liquidjax train` command in the README and the docs uses flags that exist.
    import re
    import shlex

    from liquidjax.cli import build_parser

    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = []
    for path in texts:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("liquidjax train"):
                    commands.append((path.name, shlex.split(line)[1:]))
    assert len(commands) >= 5
    parser = build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"{where}: `liquidjax {' '.join(argv)}` does not parse") from e


# ------------------------------------------------------------------- configs behind the flags
def test_data_config_is_validated_and_round_trips():
    from liquidjax.data import DataConfig

    cfg = DataConfig(dataset="ts", data_dir="/d", name="Wave", val_fraction=0.0, patch_length=3)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    # statistics recorded beside it are ignored; an old header's synthetic_seed is the seed
    old = DataConfig.from_dict({"dataset": "two_spirals", "synthetic_seed": 7, "mean": [1.0]})
    assert old.seed == 7 and old.family == "synthetic"
    with pytest.raises(ValueError, match="dataset 'ts' needs data_dir and name"):
        DataConfig(dataset="ts", data_dir="/d")
    with pytest.raises(ValueError, match="missing, patch_length apply to dataset 'ts' only"):
        DataConfig(dataset="mnist", missing="zero", patch_length=2)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        DataConfig(dataset="imagenet")
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0.0, 1.0\)"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="augment applies to image datasets only"):
        DataConfig(dataset="two_spirals", augment=True)
    a = DataConfig(dataset="mnist", limit_examples=10)
    # the data dir may move (another copy); the crop padding matters only with augment
    assert a.differences(DataConfig(dataset="mnist", limit_examples=10, data_dir="/x",
                                    augment_padding=2)) == []
    assert a.differences(DataConfig(dataset="mnist", val_seed=3)) == [
        ("val_seed", 0, 3), ("limit_examples", 10, None)]


def test_training_and_data_flags_are_derived_from_their_configs(capsys):
    import dataclasses

    from liquidjax.cli import build_parser
    from liquidjax.data import DataConfig
    from liquidjax.train import TrainConfig

    code, out, _ = _run_main(["train", "--help"], capsys)
    assert code == 0
    for cls, skip in ((TrainConfig, ()), (DataConfig, ("seed",))):
        for f in dataclasses.fields(cls):
            if f.name not in skip:
                assert "--" + f.name.replace("_", "-") in out or f.name == "learning_rate", f
    assert "--lr LEARNING_RATE, --learning-rate LEARNING_RATE" in out
    args = build_parser().parse_args(["train", "--warmup-fraction", "0.2", "--keep-checkpoints",
                                      "5", "--regression-loss", "mae", "--val-seed", "4"])
    assert (args.warmup_fraction, args.keep_checkpoints, args.regression_loss,
            args.val_seed) == (0.2, 5, "mae", 4)
    # the bounds are TrainConfig's and DataConfig's own
    for argv, expected in ((["--warmup-fraction", "1"], "expected a number in [0.0, 1.0)"),
                           (["--keep-checkpoints", "0"], "expected an integer >= 1, got 0"),
                           (["--regression-loss", "l1"], "expected one of: mse, mae"),
                           (["--val-seed", "-1"], "expected an integer in [0, 4294967295]")):
        code, _, err = _run_main(["train", *argv], capsys)
        assert code == 2 and expected in err, (argv, err)


def test_no_private_names_of_argparse_or_equinox_in_the_cli():
    import liquidjax.cli

    folder = Path(liquidjax.cli.__file__).parent
    sources = {p.name: p.read_text() for p in folder.glob("*.py")}
    assert {"_parser.py", "_data.py", "_train.py", "_evaluate.py", "_devices.py"} <= set(sources)
    for name, text in sources.items():
        assert "._subparsers" not in text and "_group_actions" not in text, name
    users = [n for n, t in sources.items() if "equinox._errors" in t]
    assert users == ["_devices.py"] and sources["_devices.py"].count("equinox._errors") == 1
    assert "equinox._errors" in (ROOT / "docs" / "troubleshooting.md").read_text()


def test_ncp_sparsity_below_its_range_is_refused_not_changed(capsys):
    from liquidjax.models import ModelConfig

    with pytest.raises(ValueError, match=r"NCP wiring needs sparsity in \[0.1, 1\)"):
        ModelConfig(input_size=2, num_classes=2, wiring="ncp", units=8, sparsity=0.0)
    code, _, err = _run_main(["train", "--dataset", "two_spirals", "--wiring", "ncp",
                              "--sparsity", "0", "--units", "8"], capsys)
    assert code == 2 and "got 0.0; for a denser wiring use wiring='random'" in err


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    base = ["train", "--dataset", "two_spirals", *SMALL]
    code, _, err = _run_main([*base, "--out-dir", str(empty), "--resume"], capsys)
    assert code == 1 and f"--resume: {empty} holds no checkpoint" in err
    assert (empty / "checkpoints").is_dir()  # a folder that existed is left alone
    new = tmp_path / "new"
    code, _, err = _run_main([*base, "--out-dir", str(new), "--resume"], capsys)
    assert code == 1 and "holds no checkpoint" in err and not new.exists()
    code, _, err = _run_main([*base, "--out-dir", str(new), "--resume", str(tmp_path / "x.ljx")],
                             capsys)
    assert code == 1 and f"--resume {tmp_path / 'x.ljx'}: no such checkpoint file" in err


def test_compute_and_memory_estimates():
    from argparse import Namespace

    from liquidjax.cli import _train
    from liquidjax.cli._errors import UsageError

    args = Namespace(units=100, layers=1, ensemble=1, cell="cfc", backbone_units=64,
                     backbone_layers=1)
    line, slow = _train.check_compute(args, nparams=10_000, batch=32, steps=20, total_steps=50,
                                      platform="cpu")
    assert line == f"{6 * 10_000 * 32 * 20 / 1e6:.1f} MFLOP per step" and slow is None
    # 6 x 1e7 x 4096 x 1000 = 245.8 TFLOP: beyond the per-step limit on up to 160 cores
    one = Namespace(units=1, layers=1, ensemble=1, cell="cfc", backbone_units=64,
                     backbone_layers=1)
    with pytest.raises(UsageError, match=r"245\.8 TFLOP per training step .* beyond the limit "
                                         r"of 60 s per step"):
        _train.check_compute(one, nparams=10**7, batch=4096, steps=1000, total_steps=1,
                             platform="cpu")
    _train.check_compute(one, nparams=10**7, batch=4096, steps=1000, total_steps=1,
                         platform="gpu")  # no CPU time limit on an accelerator
    # activations: 4 floats per unit, example and step are kept at least
    big = Namespace(units=10**7, layers=1, ensemble=1, cell="cfc", backbone_units=64,
                     backbone_layers=1)
    with pytest.raises(UsageError, match=r"activations 953\.7\).*beyond the memory limit"):
        _train.check_compute(big, nparams=10, batch=64, steps=100, total_steps=1, platform="gpu")
    cores = _train._cores()
    flops = 3 * _train.CPU_FLOPS_PER_CORE * cores  # three seconds per step
    _, slow = _train.check_compute(args, nparams=int(flops / (6 * 32 * 20)), batch=32,
                                   steps=20, total_steps=100, platform="cpu")
    assert slow is not None and "about 3.0 s per step" in slow and "5 min for 100 steps" in slow


def test_absurd_sizes_are_refused_before_the_model_is_built(capsys, tmp_path):
    # 8-unit CfC with a 4 x 8000 backbone: 192 M parameters, 6 x 1.9e8 x 2048 x 32 = 76 TFLOP
    out = tmp_path / "big"
    code, _, err = _run_main(["train", "--dataset", "two_spirals", "--units", "8",
                              "--backbone-units", "8000", "--backbone-layers", "4",
                              "--batch-size", "2048", "--out-dir", str(out),
                              "--progress", "none"], capsys)
    assert code == 2 and "75.6 TFLOP per training step (192368050 parameters)" in err, err
    assert "--backbone-layers 4" in err and "beyond the" in err and "limit" in err
    assert not out.exists()  # and the run folder it would have used is gone


def test_sigterm_raises_keyboard_interrupt_in_the_main_thread():
    import signal
    import time

    from liquidjax.cli._devices import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_interrupted_runs_name_the_checkpoint_and_the_resume_command(monkeypatch, tmp_path,
                                                                      capsys):
    from liquidjax.cli import _train
    from liquidjax.train import TrainingInterrupted

    out = tmp_path / "run"

    def stopped(checkpoint):
        def run(*args, **kwargs):
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            raise TrainingInterrupted(3, None if checkpoint is None else Path(checkpoint))
        return run

    argv = ["train", "--dataset", "two_spirals", "--out-dir", str(out), *SMALL]
    monkeypatch.setattr(_train, "_train", stopped(str(out / "ckpt.ljx")))
    code, _, err = _run_main(argv, capsys)
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        f"liquidjax train: interrupted: saved {out / 'ckpt.ljx'}; resume with: liquidjax train "
        f"--resume --out-dir {out}")
    # interrupted before anything was saved: the folder this run created goes
    import shutil

    shutil.rmtree(out)
    monkeypatch.setattr(_train, "_train", stopped(None))
    code, _, err = _run_main(argv, capsys)
    assert code == 130 and "nothing was saved" in err and not out.exists()


def test_sigterm_stops_a_training_run_with_the_resume_command(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "liquidjax", "train", "--dataset", "two_spirals",
         "--limit-examples", "64", "--epochs", "1000", "--cpu-devices", "1",
         "--out-dir", str(out), *SMALL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.monotonic()
    while not list((out / "checkpoints").glob("*.ljx")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 240
        time.sleep(0.1)
    # In one full-suite run the training went on after the signal (not reproduced alone). The
    # likeliest cause: Python runs the handler between two bytecodes of the main thread, and a
    # KeyboardInterrupt raised inside a finalizer (a __del__, a weakref callback) is printed and
    # dropped, as Ctrl-C's would be. A scheduler that stops a job repeats or escalates; so does
    # this test, at most three times.
    for _ in range(3):
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("liquidjax train: interrupted: ") and "Traceback" not in err
    assert last.endswith(f"resume with: liquidjax train --resume --out-dir {out}")


# ----------------------------------------------------------------- time-series archives as npz
def _save_npz_archive(folder: Path, name: str) -> None:
    from liquidjax.data import TimeSeriesData

    rng = np.random.default_rng(5)
    for split, n in (("TRAIN", 24), ("TEST", 10)):
        y = np.arange(n) % 2
        x = np.sin(np.arange(6)[None, :, None] * (0.5 + y[:, None, None])) + 0.1 * rng.normal(
            size=(n, 6, 1))
        data = TimeSeriesData.from_arrays(x.astype(np.float32), y, num_classes=2, name=name)
        assert data.save_npz(folder / f"{name}_{split}.npz") == folder / f"{name}_{split}.npz"


def test_ts_reads_npz_archives_and_evaluate_rebuilds_the_same_data(tmp_path, capsys):
    _save_npz_archive(tmp_path, "Waves")
    out = tmp_path / "run"
    code, stdout, err = _run_main(
        ["train", "--dataset", "ts", "--data-dir", str(tmp_path), "--name", "Waves",
         "--epochs", "1", "--batch-size", "8", "--units", "4", "--backbone-units", "4",
         "--limit-examples", "16", "--recipe", "none", "--out-dir", str(out),
         "--progress", "none", "--cpu-devices", "1"], capsys)
    assert code == 0, err
    assert "npz:" in err  # the source, in the summary line
    test_rec = [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "test"][-1]
    assert test_rec["test_examples"] == 10
    header = read_header(list_checkpoints(out / "checkpoints")[-1])
    assert header["data_config"]["limit_examples"] == 16
    assert header["data_config"]["data_dir"] == str(tmp_path)
    # evaluate reads the run's DataConfig: the same files, limit and inputs -> the same figure
    code, stdout, err = _run_main(["evaluate", str(out), "--batch-size", "8"], capsys)
    assert code == 0, err
    loss = float(re.search(r"loss (\S+) \(", stdout).group(1))
    assert loss == pytest.approx(test_rec["test_loss"], abs=1e-4)
    assert "(10 examples" in stdout
    code, stdout, err = _run_main(["evaluate", str(out), "--split", "train", "--batch-size", "8",
                                   "--limit-examples", "12"], capsys)
    assert code == 0 and "(12 examples" in stdout, err
    # a wrong data dir: the archive's remedies, on one line, never an image dataset's
    code, _, err = _run_main(["evaluate", str(out), "--data-dir", str(tmp_path / "moved")],
                             capsys)
    assert code == 1
    (line,) = [ln for ln in err.splitlines() if ln.strip()]
    assert line.startswith("liquidjax evaluate: error: dataset 'Waves'")
    assert "Waves_TRAIN.npz" in line and "TimeSeriesData.save_npz" in line
    assert "tfds" not in line and "CIFAR" not in line and "Fashion" not in line
