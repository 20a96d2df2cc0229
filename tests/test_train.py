"""Training: the jitted step, fit/evaluate, checkpoints (atomic, checked, resumable to the bit,
also after SIGKILL), non-finite loss, data parallelism over 2 CPU devices."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from liquidjax.cells._ltc import POSITIVE_PARAMS
from liquidjax.data import Loader
from liquidjax.models import ModelConfig, build_model, constraint_transforms
from liquidjax.train import (
    ArrayData,
    CheckpointError,
    DataParallel,
    NonFiniteLossError,
    RunDirError,
    TrainConfig,
    TrainState,
    evaluate,
    fit,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_optimizer,
    read_header,
    read_metrics,
    restore_model,
    save_checkpoint,
    train_step,
)

ROOT = Path(__file__).resolve().parents[1]
N, L, C = 64, 6, 3
CFG = ModelConfig(input_size=C, num_classes=2, units=8, backbone_units=8, dropout=0.1)
TCFG = TrainConfig(epochs=2, batch_size=8, learning_rate=2e-2, seed=3, log_every=3,
                   checkpoint_every=5)


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, L, C)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def data():
    x, y = _data()
    return ArrayData(x, y)


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, key=jax.random.key(0))


def _leaves(tree):
    return [np.asarray(v) for v in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def _assert_trees_equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) and la
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), "leaves differ"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, model, data):
    out = tmp_path_factory.mktemp("ref")
    result = fit(model, data, TCFG, val_data=data, out_dir=out, model_config=CFG.to_dict(),
                 progress="none")
    return out, result


def test_fit_learns_and_writes_everything(reference_run):
    out, result = reference_run
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_accuracy"] > 0.6
    assert all(h["examples_per_s"] and h["examples_per_s"] > 0 for h in hist)
    recs = read_metrics(out / "metrics.jsonl")
    events = [r["event"] for r in recs]
    assert events[0] == "start" and events[-1] == "end"
    assert events.count("epoch") == 2 and "compiled" in events
    train_recs = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in train_recs][:3] == [3, 5, 6]  # log_every=3, checkpoint_every=5
    assert result.metrics == out / "metrics.jsonl"
    assert not (out / "curves.png").exists()  # the trainer draws nothing
    ckpts = list_checkpoints(out / "checkpoints")
    assert len(ckpts) == TCFG.keep_checkpoints
    assert ckpts[-1] == result.checkpoint and read_header(ckpts[-1])["step"] == 16
    header = read_header(ckpts[-1])
    assert header["data"] == {"epoch": 2, "batch": 0, "seed": 3, "num_examples": N,
                              "batch_size": 8}
    assert header["model_config"] == json.loads(json.dumps(CFG.to_dict()))


def test_resume_in_process_bit_identical(tmp_path, reference_run, model, data):
    _, ref = reference_run
    # Stop after 7 steps (mid-epoch, between checkpoints at 5 and 7), then resume.
    part = fit(model, data, TrainConfig(**{**TCFG.to_dict(), "max_steps": 7}), val_data=data,
               out_dir=tmp_path, model_config=CFG.to_dict(), progress="none")
    assert read_header(part.checkpoint)["data"]["batch"] == 7
    done = fit(model, data, TCFG, val_data=data, out_dir=tmp_path, resume=True,
               model_config=CFG.to_dict(), progress="none")
    _assert_trees_equal(done.state, ref.state)
    assert done.history[-1]["train_loss"] == ref.history[-1]["train_loss"]
    restored, _ = restore_model(done.checkpoint, model)
    _assert_trees_equal(restored, ref.model)


def test_checkpoint_errors(tmp_path, reference_run, model, data):
    out, ref = reference_run
    good = ref.checkpoint
    raw = good.read_bytes()
    like = ref.state

    flipped = tmp_path / "flipped.ljx"
    flipped.write_bytes(raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:])
    with pytest.raises(CheckpointError, match=r"flipped\.ljx.*checksum mismatch"):
        load_checkpoint(flipped, like)

    short = tmp_path / "short.ljx"
    short.write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match=r"short\.ljx.*truncated payload"):
        load_checkpoint(short, like)

    junk = tmp_path / "junk.ljx"
    junk.write_bytes(b"hello world")
    with pytest.raises(CheckpointError, match=r"junk\.ljx.*not a liquidjax checkpoint"):
        load_checkpoint(junk, like)

    other = CFG.to_dict() | {"units": 16, "cell": "ltc"}
    with pytest.raises(CheckpointError, match=r"different model:\n  cell: checkpoint has 'cfc', "
                       r"requested 'ltc'\n  units: checkpoint has 8, requested 16"):
        load_checkpoint(good, like, model_config=other)

    # resuming with other training settings names them; nothing is written
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(CheckpointError,
                       match=r"learning_rate: checkpoint has 0\.02, requested 0\.1"):
        fit(model, data, TrainConfig(**{**TCFG.to_dict(), "learning_rate": 0.1}),
            out_dir=out, resume=True, model_config=CFG.to_dict(), progress="none")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    with pytest.raises(CheckpointError, match="no such file"):
        fit(model, data, TCFG, out_dir=tmp_path / "x", resume=tmp_path / "missing.ljx",
            progress="none")


def _split_checkpoint(raw: bytes) -> tuple[dict, bytes]:
    from liquidjax.train._checkpoint import MAGIC

    (n,) = struct.unpack("<Q", raw[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8 + 32
    return json.loads(raw[start:start + n]), raw[start + n:]


def _write_checkpoint(path: Path, header: dict | bytes, payload: bytes, *, version=2,
                      length: int | None = None) -> Path:
    """A checkpoint file with a valid header checksum (version 2) or in the old version 1
    layout, whatever the header says (a crafted file)."""
    from liquidjax.train._checkpoint import MAGIC, MAGIC_V1

    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = struct.pack("<Q", len(head) if length is None else length)
    if version == 1:
        path.write_bytes(MAGIC_V1 + n + head + payload)
    else:
        path.write_bytes(MAGIC + n + hashlib.sha256(head).digest() + head + payload)
    return path


def test_whole_checkpoint_is_verified(tmp_path, reference_run):
    """Issue 13: the header (normalisation, readout, configs) is covered by a checksum like the
    payload; crafted headers (wrong types, absurd lengths) are refused; format 1 still reads."""
    _, ref = reference_run
    raw = ref.checkpoint.read_bytes()
    header, payload = _split_checkpoint(raw)
    like = ref.state
    head_at = raw.index(b'"model_config"')
    for i, edit in enumerate((
        lambda r: r[:head_at] + bytes([r[head_at] ^ 1]) + r[head_at + 1:],  # one bit
        lambda r: r.replace(b'"readout": "last"', b'"readout": "mean"'),  # same length
        lambda r: r.replace(b'"units": 8', b'"units": 9'),
    )):
        bad = tmp_path / f"edited{i}.ljx"
        bad.write_bytes(edit(raw))
        assert bad.read_bytes() != raw
        for read in (read_header, lambda p: load_checkpoint(p, like)):
            with pytest.raises(CheckpointError, match=rf"edited{i}\.ljx.*checksum mismatch in "
                               "the header"):
                read(bad)

    crafted = [
        (dict(header, step="7"), "corrupt header: step='7'"),
        (dict(header, payload_bytes=None), "corrupt header: payload_bytes=None"),
        (dict(header, format_version=9), "format version 9 in a version 2 file"),
        ([1, 2], "corrupt header: a JSON list"),
    ]
    for i, (h, msg) in enumerate(crafted):
        with pytest.raises(CheckpointError, match=re.escape(msg)):
            read_header(_write_checkpoint(tmp_path / f"crafted{i}.ljx", h, payload))
    for length in (2**63, len(payload) + 10**6):
        with pytest.raises(CheckpointError, match=f"length field says {length} bytes"):
            read_header(_write_checkpoint(tmp_path / "long.ljx", header, payload, length=length))

    # format 1 (no header digest) is still read, payload verified
    old = dict(header, format_version=1)
    v1 = _write_checkpoint(tmp_path / "v1.ljx", old, payload, version=1)
    state, got = load_checkpoint(v1, like)
    assert got == old
    _assert_trees_equal(state, ref.state)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(_write_checkpoint(tmp_path / "v1bad.ljx", old, payload[:-1] + b"\0",
                                          version=1), like)


def test_unusable_run_dir_fails_before_training(tmp_path, model, data, monkeypatch):
    """Issue 13: an out dir that cannot hold the outputs is refused before the first step (not
    with a traceback at the first save, after an epoch of work)."""

    def never(batch, rng):
        raise AssertionError("training started")

    loader = Loader(data.arrays(), 8, seed=TCFG.seed, transform=never)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(a_file, f"{a_file} is a file, not a folder")]
    for i, (name, what) in enumerate((("checkpoints", "is a file, not a folder"),
                                      ("metrics.jsonl", "is not a file"),
                                      ("curves.png", "is a folder"))):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / name).mkdir() if name.endswith((".jsonl", ".png")) else (run / name).write_text("")
        cases.append((run, f"{run / name} {what}"))
    cases.append((a_file / "sub", f"{a_file / 'sub'} cannot be created: a parent of it is a file"))
    for out, msg in cases:
        with pytest.raises(RunDirError, match=re.escape(msg)):
            fit(model, loader, TCFG, out_dir=out, progress="none")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the write probe fail as it would
        def refuse(self, data):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "write_bytes", refuse)
    with pytest.raises(RunDirError, match=re.escape(f"{ro} is not writable (Permission denied)")):
        fit(model, loader, TCFG, out_dir=ro, progress="none")


def test_bad_labels_are_named_before_training(model, data):
    """Issue 13: a label outside [0, num_classes) is refused on the host, naming the values
    (it trained silently as another class, or gave a NaN loss)."""
    x, y = data.x, data.y.copy()
    y[5], y[9], y[11] = -1, 2, -1

    def never(batch, rng):
        raise AssertionError("training started")

    msg = (r"training data: 3 of 64 labels are outside the valid range \[0, 1\] "
           r"\(num_classes=2\): -1 \(2 examples, first at index 5\), 2 \(1 example, first at "
           r"index 9\)")
    with pytest.raises(ValueError, match=msg):
        fit(model, ArrayData(x, y), TCFG, progress="none")
    for loader in (Loader((x, y), 8, transform=never), Loader({"x": x, "y": y}, 8,
                                                                  transform=never)):
        with pytest.raises(ValueError, match=msg):
            fit(model, loader, TCFG, progress="none")
    with pytest.raises(ValueError, match=r"validation data: 1 of 4 labels .*: 7 \(1 example"):
        fit(model, data, TCFG, val_data=ArrayData(x[:4], np.array([0, 1, 7, 0])),
            progress="none")
    with pytest.raises(ValueError, match=r"evaluation data: 3 of 64 labels .*-1 \(2 examples"):
        evaluate(model, ArrayData(x, y), batch_size=8)
    with pytest.raises(ValueError, match=r"y: label 4294967296 at index 3 is not a class"):
        ArrayData(x, np.where(np.arange(64) == 3, 2**32, 0))  # would wrap to 0 as int32


def test_save_is_atomic_and_keeps_the_newest(tmp_path):
    state = {"a": np.arange(4.0), "b": np.ones(3, np.int32)}
    d = tmp_path / "ck"
    d.mkdir()
    stale = d / ".ckpt-000000009.ljx.tmp"
    stale.write_bytes(b"half written")  # left by a killed save
    assert latest_checkpoint(d) is None
    for step in (1, 2, 3, 4):
        save_checkpoint(d, {"a": state["a"] * step, "b": state["b"]}, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(d)] == ["ckpt-000000003.ljx", "ckpt-000000004.ljx"]
    assert not stale.exists()
    got, header = load_checkpoint(latest_checkpoint(d), state)
    np.testing.assert_array_equal(got["a"], state["a"] * 4)
    assert header["step"] == 4 and header["format_version"] == 2


def test_nonfinite_loss_stops_and_keeps_last_good(tmp_path, model):
    x, y = _data()
    cfg = TrainConfig(**{**TCFG.to_dict(), "log_every": 1, "checkpoint_every": 2})

    def poison(batch, rng):  # the 4th batch gets an out-of-range label: NaN cross-entropy
        if rng.bit_generator.seed_seq.entropy[1:] == (0, 3):  # (seed, epoch, step)
            batch = dict(batch, y=np.where(np.arange(8) == 0, 99, batch["y"]))
        return batch

    # (labels are checked on the host before training; a transform slips past that check and
    # exercises the on-device guard)
    loader = Loader({"x": x, "y": y}, 8, seed=cfg.seed, transform=poison)
    with pytest.raises(NonFiniteLossError, match=r"step 4 \(epoch 1\).*ckpt-000000002\.ljx"):
        fit(model, loader, cfg, out_dir=tmp_path, model_config=CFG.to_dict(), progress="none")
    assert [read_header(p)["step"] for p in list_checkpoints(tmp_path / "checkpoints")] == [2]
    state, _ = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"),
                               TrainState.create(model, make_optimizer(cfg, 16),
                                                 jax.random.key(0)))
    assert all(np.all(np.isfinite(v)) for v in _leaves(state.model))
    assert any(r["event"] == "nonfinite" and r["step"] == 4
               for r in read_metrics(tmp_path / "metrics.jsonl"))


def test_nonfinite_update_is_skipped_on_device():
    m = build_model(CFG, key=jax.random.key(1))
    opt = optax.chain(optax.sgd(0.1), optax.scale(jnp.nan))  # any optax transformation
    state = TrainState.create(m, opt, jax.random.key(0))
    x, y = _data(8)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    new = train_step(state, opt, batch)
    new = train_step(new, opt, batch)
    assert int(new.bad_step) == 1 and int(new.step) == 2
    _assert_trees_equal(new.model, state.model)


def test_projection_keeps_ltc_parameters_nonnegative():
    cfg = ModelConfig(input_size=C, num_classes=2, units=6, cell="ltc", ode_unfolds=2,
                      implicit_param_constraints=False)
    m = build_model(cfg, key=jax.random.key(0))
    x, y = _data(8)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    extra = constraint_transforms(m)
    assert len(extra) == 1
    assert constraint_transforms(build_model(dataclasses.replace(
        cfg, implicit_param_constraints=True), key=jax.random.key(0))) == ()
    cells = {}
    for name, opt in (("bare", optax.sgd(50.0)), ("projected", optax.chain(optax.sgd(50.0),
                                                                           *extra))):
        new = train_step(TrainState.create(m, opt, jax.random.key(0)), opt, batch)
        cells[name] = new.model.layers[0].cell
    cell, old = cells["projected"], m.layers[0].cell
    for name in POSITIVE_PARAMS:
        assert float(jnp.min(getattr(cell, name))) >= 0.0, name
    assert any(not np.array_equal(getattr(cell, n), getattr(old, n)) for n in POSITIVE_PARAMS)
    # exactly zero somewhere: the projection was needed, and the step itself clips nothing
    assert any(float(jnp.min(getattr(cell, n))) == 0.0 for n in POSITIVE_PARAMS)
    assert any(float(jnp.min(getattr(cells["bare"], n))) < 0.0 for n in POSITIVE_PARAMS)


@pytest.mark.parametrize("conv_dropout", [0.0, 0.5])
def test_stem_dropout_alone_changes_the_training_forward(conv_dropout):
    # No other dropout in the model: the trainer must still pass a key (no special case keyed
    # on a field named `dropout`). With a zero rate, training and inference losses agree.
    cfg = ModelConfig(input_size=8, num_classes=2, kind="conv", image_shape=(8, 8, 1),
                      conv_channels=(4,), units=4, backbone_units=4,
                      conv_dropout=conv_dropout)
    m = build_model(cfg, key=jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 2, 8).astype(np.int32)
    opt = optax.sgd(0.0)
    new = train_step(TrainState.create(m, opt, jax.random.key(0)), opt,
                     {"x": jnp.asarray(x), "y": jnp.asarray(y)})
    train_loss = float(new.loss_sum) / 8
    eval_loss = evaluate(m, ArrayData(x, y), batch_size=8)["loss"]
    if conv_dropout:
        assert abs(train_loss - eval_loss) > 1e-4
    else:
        assert train_loss == pytest.approx(eval_loss, rel=1e-5)


def _inexact(tree):
    return [np.asarray(v) for v in
            jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))]


def test_ema_is_the_moving_average_of_the_iterates():
    m = build_model(CFG, key=jax.random.key(1))
    opt = optax.adam(5e-2)
    x, y = _data(8)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    plain = TrainState.create(m, opt, jax.random.key(0))
    kept = TrainState.create(m, opt, jax.random.key(0), ema=True)
    assert plain.ema_model is None
    decay = 0.2  # below the warm-up's (1 + k) / (10 + k) from k = 2 on: both branches run
    want = [v.astype(np.float64) for v in _inexact(m)]
    for k in range(4):
        plain = train_step(plain, opt, batch)
        kept = train_step(kept, opt, batch, ema=decay)
        d = min(decay, (1 + k) / (10 + k))
        want = [d * a + (1 - d) * p for a, p in zip(want, _inexact(plain.model))]
    _assert_trees_equal(kept.model, plain.model)  # the average does not change training
    got = _inexact(kept.ema_model)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # not vacuous: the average is neither the last iterate nor the initial model
    assert not all(np.allclose(g, p) for g, p in zip(got, _inexact(plain.model)))
    assert not all(np.allclose(g, p) for g, p in zip(got, _inexact(m)))

    with pytest.raises(ValueError, match=r"without a moving average: create it with "
                       r"TrainState\.create\(\.\.\., ema=True\)"):
        train_step(plain, opt, batch, ema=0.9)
    with pytest.raises(ValueError, match=r"keeps a moving average: pass its decay"):
        train_step(kept, opt, batch)
    with pytest.raises(ValueError, match=r"ema must be a decay in \(0, 1\), e\.g\. 0\.999; "
                       r"got 1\.0"):
        train_step(kept, opt, batch, ema=1.0)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match=r"ema must be a number in \(0\.0, 1\.0\)"):
            TrainConfig(ema=bad)


def test_ema_is_evaluated_checkpointed_and_resumed(tmp_path, reference_run, model, data):
    _, plain = reference_run
    cfg = TrainConfig(**{**TCFG.to_dict(), "ema": 0.9})
    full = fit(model, data, cfg, val_data=data, out_dir=tmp_path / "full",
               model_config=CFG.to_dict(), progress="none")
    _assert_trees_equal(full.state.model, plain.state.model)  # same training trajectory
    assert full.model is full.state.ema_model
    last = full.history[-1]
    assert last["val_accuracy"] == evaluate(full.model, data, batch_size=8)["accuracy"]
    assert last["raw_val_accuracy"] == plain.history[-1]["val_accuracy"]
    assert last["val_loss"] != last["raw_val_loss"]  # two different models were evaluated
    # restore_model gives the average by default, the last iterate with ema=False
    fresh = build_model(CFG, key=jax.random.key(7))
    _assert_trees_equal(restore_model(full.checkpoint, fresh)[0], full.state.ema_model)
    _assert_trees_equal(restore_model(full.checkpoint, fresh, ema=False)[0], full.state.model)
    _assert_trees_equal(restore_model(plain.checkpoint, fresh, ema=None)[0], plain.model)
    with pytest.raises(CheckpointError, match="holds no moving average"):
        restore_model(plain.checkpoint, fresh, ema=True)
    # a run stopped mid-epoch resumes to the same average, bit for bit
    out = tmp_path / "resumed"
    fit(model, data, TrainConfig(**{**cfg.to_dict(), "max_steps": 7}), val_data=data,
        out_dir=out, model_config=CFG.to_dict(), progress="none")
    for other in (None, 0.99):
        with pytest.raises(CheckpointError, match=rf"a run with ema=0\.9 .* but "
                           rf"ema={other!r} was requested: resume with the same ema"):
            fit(model, data, TrainConfig(**{**cfg.to_dict(), "ema": other}), out_dir=out,
                resume=True, model_config=CFG.to_dict(), progress="none")
    done = fit(model, data, cfg, val_data=data, out_dir=out, resume=True,
               model_config=CFG.to_dict(), progress="none")
    _assert_trees_equal(done.state, full.state)
    with pytest.raises(CheckpointError, match=r"a run with ema=None .* but ema=0\.9 was"):
        fit(model, data, cfg, out_dir=reference_run[0], resume=True,
            model_config=CFG.to_dict(), progress="none")


def test_evaluate_pads_the_last_batch(reference_run):
    _, ref = reference_run
    x, y = _data(10, seed=5)
    got = evaluate(ref.model, ArrayData(x, y), batch_size=8)
    logits = jax.vmap(ref.model)(jnp.asarray(x))
    assert got["count"] == 10
    assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y)))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
    assert got["loss"] == pytest.approx(float(jnp.mean(ce)), rel=1e-5)


def test_sequence_data_with_timespans_and_mask(tmp_path):
    from liquidjax.data import two_spirals

    train = two_spirals(32, seed=0, min_length=4, max_length=8)
    cfg = ModelConfig(input_size=2, num_classes=2, units=8, cell="ltc", wiring="ncp",
                      ode_unfolds=2)
    m = build_model(cfg, key=jax.random.key(0))
    tc = TrainConfig(epochs=1, batch_size=8, log_every=2)
    res = fit(m, Loader(train, 8, seed=0), tc, val_data=Loader(train, 8, shuffle=False,
              drop_last=False), progress="none")
    assert np.isfinite(res.history[0]["train_loss"]) and res.checkpoint is None
    with pytest.raises(ValueError, match="batch_size 16, but the config asks for 8"):
        fit(m, Loader(train, 16, seed=0), tc, progress="none")


# ------------------------------------------------------------------------------ subprocess tests
DRIVER = textwrap.dedent("""
    import sys, time
    import jax, numpy as np
    from liquidjax.data import Loader
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.train import TrainConfig, fit

    out, resume, delay = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)

    def slow(batch, rng):  # gives the test time to kill the run mid-way
        time.sleep(delay)
        return batch

    cfg = ModelConfig(input_size=3, num_classes=2, units=8, backbone_units=8, dropout=0.1)
    tc = TrainConfig(epochs=3, batch_size=8, learning_rate=2e-2, seed=3, log_every=1,
                     checkpoint_every=1)
    loader = Loader({"x": x, "y": y}, 8, seed=3, transform=slow if delay else None)
    fit(build_model(cfg, key=jax.random.key(0)), loader, tc, out_dir=out,
        resume="latest" if resume else None, model_config=cfg.to_dict(), progress="none")
    print("FINISHED")
""")


def _env(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)
    return env


def _newest_step(d: Path) -> int:
    try:
        p = latest_checkpoint(d)
        return -1 if p is None else int(p.name[5:14])
    except OSError:
        return -1


def _kill_after(proc, ckdir: Path, step: int, timeout=120.0):
    t0 = time.monotonic()
    while _newest_step(ckdir) < step:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.04))  # anywhere: mid-step, mid-write, between
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    cmd = [sys.executable, str(script)]
    # The uninterrupted run fills a persistent compilation cache that the later processes reuse
    # (same executables, less time).
    env = _env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    ref = subprocess.run(cmd + [str(ref_dir), "0", "0"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0 and "FINISHED" in ref.stdout, ref.stderr
    p = subprocess.Popen(cmd + [str(run_dir), "0", "0.03"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_after(p, run_dir / "checkpoints", 3)
    p = subprocess.Popen(cmd + [str(run_dir), "1", "0.03"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_after(p, run_dir / "checkpoints", 11)
    done = subprocess.run(cmd + [str(run_dir), "1", "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "FINISHED" in done.stdout, done.stderr

    final_ref = latest_checkpoint(ref_dir / "checkpoints")
    final_run = latest_checkpoint(run_dir / "checkpoints")
    assert read_header(final_ref)["step"] == read_header(final_run)["step"] == 24
    cfg = ModelConfig(input_size=3, num_classes=2, units=8, backbone_units=8, dropout=0.1)
    tc = TrainConfig(epochs=3, batch_size=8, learning_rate=2e-2, seed=3)
    like = TrainState.create(build_model(cfg, key=jax.random.key(0)), make_optimizer(tc, 24),
                             jax.random.key(0))
    a, _ = load_checkpoint(final_ref, like)
    b, _ = load_checkpoint(final_run, like)
    _assert_trees_equal(a, b)  # model, optimiser state, step, key, metric sums
    resumes = [r for r in read_metrics(run_dir / "metrics.jsonl")
               if r["event"] == "start" and r["resumed_from"]]
    assert len(resumes) == 2


DP_DRIVER = textwrap.dedent("""
    import json
    import jax, numpy as np
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.train import ArrayData, DataParallel, TrainConfig, fit

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    cfg = ModelConfig(input_size=3, num_classes=2, units=8, backbone_units=8)
    tc = TrainConfig(epochs=2, batch_size=8, learning_rate=2e-2, log_every=2)
    out = {}
    for name, devices in (("two", jax.devices()), ("one", jax.devices()[:1])):
        dp = DataParallel.create(devices)
        res = fit(build_model(cfg, key=jax.random.key(0)), ArrayData(x, y), tc,
                  val_data=ArrayData(x[:20], y[:20]), progress="none", parallel=dp)
        leaves = jax.tree_util.tree_leaves(res.model)
        out[name] = {
            "losses": [h["train_loss"] for h in res.history],
            "val": [h["val_loss"] for h in res.history],
            "params": [np.asarray(v).ravel().tolist() for v in leaves if hasattr(v, "dtype")
                       and np.issubdtype(v.dtype, np.floating)],
            "shards": len(dp.shard_batch({"x": x[:8]}, 8)["x"].addressable_shards),
            "param_sharding": str(leaves[0].sharding.spec) if hasattr(leaves[0], "sharding")
                              else None,
        }
    try:
        fit(build_model(cfg, key=jax.random.key(0)), ArrayData(x, y),
            TrainConfig(batch_size=7), progress="none")
    except ValueError as e:
        out["error"] = str(e)
    dp = DataParallel.create()
    out["num_devices"] = dp.num_devices
    dp.check_batch_size(8)
    try:
        dp.check_batch_size(6 + 1)
    except ValueError as e:
        out["check_error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_two_devices_match_one(tmp_path):
    script = tmp_path / "dp.py"
    script.write_text(DP_DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.split("RESULT", 1)[1])
    two, one = res["two"], res["one"]
    assert two["shards"] == 2 and one["shards"] == 1
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(two["val"], one["val"], rtol=1e-5)
    for a, b in zip(two["params"], one["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert "batch_size=7 is not divisible by the number of devices (2)" in res["error"]
    assert res["num_devices"] == 2
    assert "batch_size=7 is not divisible by the number of devices (2)" in res["check_error"]


# ------------------------------------------------------------------------------- multi-process
MP_DRIVER = textwrap.dedent("""
    import sys, time
    import jax
    port, pid, out, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    # CPU collectives between processes (gloo is JAX's CPU default; set explicitly)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60, heartbeat_timeout_seconds=10)
    import numpy as np
    from liquidjax.data import Loader
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.train import PeerFailureError, TrainConfig, fit

    assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)

    def slow(batch, rng):  # gives the test time to kill a process mid-run
        time.sleep(delay)
        return batch

    cfg = ModelConfig(input_size=3, num_classes=2, units=8, backbone_units=8)
    tc = TrainConfig(epochs=2, batch_size=8, learning_rate=2e-2, log_every=2)
    loader = Loader({"x": x, "y": y}, 8, seed=0, transform=slow if delay else None)
    try:
        fit(build_model(cfg, key=jax.random.key(0)), loader, tc, out_dir=out,
            model_config=cfg.to_dict(), progress="none")
    except PeerFailureError as e:
        print("PEER-FAILURE " + str(e), flush=True)
        import os
        os._exit(3)  # skip the distributed shutdown barrier, which the dead peer cannot join
    print("FINISHED", flush=True)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(tmp_path, out, delay):
    script = tmp_path / "mp.py"
    script.write_text(MP_DRIVER)
    port = str(_free_port())
    return [subprocess.Popen([sys.executable, str(script), port, str(i), str(out), str(delay)],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in (0, 1)]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Issue 13: the multi-host path (jax.distributed.initialize, each process feeding its rows
    of the global batch) gives the parameters of one process on the same global batches; a
    process killed mid-run is reported by the survivor within the heartbeat timeout, not hung."""
    procs = _launch_two(tmp_path, tmp_path / "mp", 0)
    # the one-process reference, trained here while the two processes run
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int32)
    cfg = ModelConfig(input_size=3, num_classes=2, units=8, backbone_units=8)
    tc = TrainConfig(epochs=2, batch_size=8, learning_rate=2e-2, log_every=2)
    try:
        one = fit(build_model(cfg, key=jax.random.key(0)), Loader({"x": x, "y": y}, 8, seed=0),
                  tc, progress="none", parallel=DataParallel.create(jax.devices()[:1]))
    except BaseException:
        for p in procs:
            p.kill()
            p.communicate()
        raise
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and "FINISHED" in o, e[-3000:]
    mp_ckpt = latest_checkpoint(tmp_path / "mp" / "checkpoints")
    assert read_header(mp_ckpt)["step"] == 12 and read_header(mp_ckpt)["num_devices"] == 2
    got, _ = load_checkpoint(mp_ckpt, jax.device_get(one.state))
    la, lb = _leaves(got.model), _leaves(one.state.model)
    assert len(la) == len(lb) > 3
    for a, b in zip(la, lb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(_leaves(build_model(cfg, key=jax.random.key(0)))[0], la[0])

    # kill process 1 after the first checkpoint: process 0 reports it, quickly
    procs = _launch_two(tmp_path, tmp_path / "killed", 0.3)
    t0 = time.monotonic()
    while latest_checkpoint(tmp_path / "killed" / "checkpoints") is None:
        assert time.monotonic() - t0 < 120 and procs[0].poll() is None, procs[0].communicate()
        time.sleep(0.05)
    procs[1].kill()
    t_kill = time.monotonic()
    o, e = procs[0].communicate(timeout=60)
    procs[1].communicate()
    assert time.monotonic() - t_kill < 40
    assert procs[0].returncode == 3, (o, e[-3000:])
    assert "PEER-FAILURE process 0 of 2: a collective operation failed" in o
    assert "the last checkpoint is" in o and "ckpt-000000006.ljx" in o


RT_DRIVER = textwrap.dedent("""
    import sys
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    from liquidjax.cli._devices import run_time_errors_as_nan
    from liquidjax.models import ModelConfig, build_model
    from liquidjax.train import ArrayData, NonFiniteLossError, TrainConfig, fit

    assert jax.device_count() == 2
    nan_mode = run_time_errors_as_nan(sys.argv[1] == "nan")
    nan_mode.__enter__()  # for the rest of the script (the reference keeps it entered)
    rng = np.random.default_rng(0)
    x = 3 * np.ones((16, 12, 3), np.float32)
    y = (rng.random(16) > 0.5).astype(np.int32)
    cfg = ModelConfig(input_size=3, num_classes=2, cell="ltc", solver="euler", ode_unfolds=1,
                      units=4)
    model = build_model(cfg, key=jax.random.key(0))
    # a stiff cell (capacitance softplus(-8) = 3e-4): explicit Euler diverges, check_solution fires
    model = eqx.tree_at(lambda m: m.layers[0].cell.cm, model,
                        jnp.full_like(model.layers[0].cell.cm, -8.0))
    try:
        fit(model, ArrayData(x, y), TrainConfig(epochs=1, batch_size=8), progress="none")
    except NonFiniteLossError as e:
        print("NONFINITE", e)
""")


@pytest.mark.slow
def test_run_time_check_on_two_devices_does_not_hang(tmp_path):
    """Issue 13: a failing run-time check inside a data-parallel step (here: a diverging solver)
    stops one device while the other waits in the all-reduce until XLA aborts; with run-time
    errors as NaN (what `liquidjax train` does on several devices) the non-finite-loss guard
    stops the run cleanly instead."""
    script = tmp_path / "rt.py"
    script.write_text(RT_DRIVER)
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), "nan"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NONFINITE non-finite loss or gradient at step 1" in proc.stdout
    assert time.monotonic() - t0 < 120


# ------------------------------------------------------------------ issue 24: checkpoints, faults
def test_restore_model_names_a_different_model(reference_run, model):
    _, ref = reference_run
    relu_config = dataclasses.replace(CFG, activation="relu")
    relu = build_model(relu_config, key=jax.random.key(0))
    assert [a.shape for a in _leaves(relu)] == [a.shape for a in _leaves(model)]  # same shapes
    # from the model alone (its recorded identity) and from its config
    with pytest.raises(CheckpointError, match=r"activation lecun_tanh vs relu"):
        restore_model(ref.checkpoint, relu)
    with pytest.raises(CheckpointError, match=r"model \(checkpoint vs the model to load into\): "
                       r"activation lecun_tanh vs relu$"):
        restore_model(ref.checkpoint, model, model_config=relu_config)
    with pytest.raises(CheckpointError, match=r"units 8 vs 16"):
        restore_model(ref.checkpoint, model, model_config=CFG.to_dict() | {"units": 16})
    ltc = build_model(dataclasses.replace(CFG, cell="ltc"), key=jax.random.key(0))
    with pytest.raises(CheckpointError, match=r"model\.layers\[0\]\.cell CfC vs LTC$"):
        restore_model(ref.checkpoint, ltc)
    big = build_model(dataclasses.replace(CFG, units=64), key=jax.random.key(0))
    with pytest.raises(CheckpointError, match=r"more than the checkpoint's whole payload"):
        restore_model(ref.checkpoint, big)
    restored, _ = restore_model(ref.checkpoint, model, model_config=CFG)  # the same model loads
    _assert_trees_equal(restored, ref.model)


def test_appended_junk_and_absurd_sizes_are_named(tmp_path, reference_run):
    _, ref = reference_run
    raw = ref.checkpoint.read_bytes()
    junk = tmp_path / "junk.ljx"
    junk.write_bytes(raw + b"appended!")
    for read in (read_header, lambda p: load_checkpoint(p, ref.state)):
        with pytest.raises(CheckpointError, match=r"9 unexpected bytes after the payload"):
            read(junk)
    # a crafted header claims a huge model: refused from the payload size, before any model
    # could be built from it
    header, payload = _split_checkpoint(raw)
    header["model_config"] = dict(header["model_config"], units=10**9)
    with pytest.raises(CheckpointError, match=r"units=1000000000, which needs at least "
                       r"2000000000 bytes"):
        read_header(_write_checkpoint(tmp_path / "huge.ljx", header, payload))


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_disk_full_names_the_file_and_keeps_what_was_written(tmp_path, model, data,
                                                             monkeypatch):
    import errno

    from liquidjax.train import RunWriteError

    real_fsync, real_write = os.fsync, os.write

    def full_at_step_10(fd):  # the 2nd checkpoint (step 10) hits a full disk
        if _fd_path(fd).endswith(".ckpt-000000010.ljx.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_step_10)
    run = tmp_path / "a"
    with pytest.raises(RunWriteError, match=r"ckpt-000000010\.ljx could not be written \(No "
                       r"space left on device\); training stopped, the last good checkpoint is "
                       r".*ckpt-000000008\.ljx$") as e:
        fit(model, data, TCFG, out_dir=run, model_config=CFG.to_dict(), progress="none")
    assert e.value.checkpoint.name == "ckpt-000000008.ljx"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "ckpt-000000005.ljx", "ckpt-000000008.ljx"]  # no partial .tmp
    load_checkpoint(run / "checkpoints" / "ckpt-000000008.ljx", TrainState.create(
        model, make_optimizer(TCFG, 16), jax.random.key(0)))  # intact
    monkeypatch.setattr(os, "fsync", real_fsync)

    def full_at_epoch_record(fd, data):  # half a line is written, then the disk is full
        if _fd_path(fd).endswith("metrics.jsonl") and b'"event": "epoch"' in bytes(data):
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_at_epoch_record)
    run = tmp_path / "b"
    with pytest.raises(RunWriteError, match=r"metrics\.jsonl could not be written.*the last "
                       r"good checkpoint is .*ckpt-000000008\.ljx$"):
        fit(model, data, TCFG, out_dir=run, model_config=CFG.to_dict(), progress="none")
    monkeypatch.setattr(os, "write", real_write)
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert events[0] == "start" and "train" in events and "epoch" not in events


def test_metrics_file_is_strict_json(tmp_path):
    from liquidjax.train import RunLogger

    logger = RunLogger(tmp_path, progress="none")
    logger.record("epoch", val_accuracy=float("nan"), losses=[1.0, float("inf")],
                  nested={"x": float("-inf")})

    def no_constants(name):
        raise AssertionError(f"bare {name} in metrics.jsonl")

    rec = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=no_constants)
    assert rec["val_accuracy"] is None and rec["losses"] == [1.0, None]
    assert rec["nested"] == {"x": None}


def test_interrupt_checkpoints_and_resume_is_bit_identical(tmp_path, reference_run, model,
                                                           data, monkeypatch):
    from liquidjax.train import TrainingInterrupted, _fit

    _, ref = reference_run
    real_step, calls = _fit.train_step, []

    def interrupted_at_7(*args, **kwargs):  # Ctrl-C arrives while step 7 runs
        calls.append(1)
        out = real_step(*args, **kwargs)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the KeyboardInterrupt lands here, or just after
        return out

    monkeypatch.setattr(_fit, "train_step", interrupted_at_7)
    with pytest.raises(TrainingInterrupted) as e:
        fit(model, data, TCFG, val_data=data, out_dir=tmp_path, model_config=CFG.to_dict(),
            progress="none")
    monkeypatch.setattr(_fit, "train_step", real_step)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.step in (6, 7)
    ckpt = e.value.checkpoint
    assert ckpt == latest_checkpoint(tmp_path / "checkpoints")
    header = read_header(ckpt)
    assert header["step"] == e.value.step and header["data"]["batch"] == e.value.step
    assert f"after step {e.value.step}" in str(e.value) and str(ckpt) in str(e.value)
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["event"] == "interrupted"
    done = fit(model, data, TCFG, val_data=data, out_dir=tmp_path, resume=True,
               model_config=CFG.to_dict(), progress="none")
    _assert_trees_equal(done.state, ref.state)


# --------------------------------------------------- issue 22: selection by validation, budget
def test_keep_best_returns_the_best_validation_epoch(tmp_path, reference_run, model, data,
                                                     monkeypatch, capsys):
    from liquidjax.train import _fit

    _, ref = reference_run
    real_evaluate, scripted = _fit.evaluate, iter([0.9, 0.5])

    def worse_later(*args, **kwargs):  # epoch 1 scores best, whatever the real figures
        return dict(real_evaluate(*args, **kwargs), accuracy=next(scripted))

    monkeypatch.setattr(_fit, "evaluate", worse_later)
    cfg = dataclasses.replace(TCFG, keep_best=True)
    # stopped in epoch 2 and resumed: the best epoch so far travels with the checkpoint
    part = fit(model, data, dataclasses.replace(cfg, max_steps=10), val_data=data,
               out_dir=tmp_path, model_config=CFG.to_dict(), progress="none")
    assert part.best_epoch == 1 and part.stop_reason == "max_steps"
    best = fit(model, data, cfg, val_data=data, out_dir=tmp_path, model_config=CFG.to_dict(),
               resume=True, progress="plain")
    monkeypatch.setattr(_fit, "evaluate", real_evaluate)
    assert best.best_epoch == 1 and best.stop_reason == "epochs"
    assert "best validation epoch: 1" in capsys.readouterr().err
    _assert_trees_equal(best.state, ref.state)  # selection does not change training
    first = fit(model, data, dataclasses.replace(TCFG, max_steps=8), progress="none")
    _assert_trees_equal(best.model, first.model)  # the model after epoch 1 (8 steps)
    assert best.best_checkpoint == tmp_path / "checkpoints" / "best.ljx"
    _assert_trees_equal(restore_model(best.best_checkpoint, model)[0], first.model)
    assert not any(np.array_equal(a, b) for a, b in zip(_leaves(best.model), _leaves(ref.model))
                   if a.size > 1)
    with pytest.raises(ValueError, match="keep_best=True selects the model by its validation"):
        fit(model, data, cfg, progress="none")


def test_time_budget_stops_at_an_epoch_end(model, data, capsys):
    cfg = dataclasses.replace(TCFG, time_budget=1e-6)
    result = fit(model, data, cfg, progress="plain")
    assert len(result.history) == 1 and result.stop_reason == "time_budget"
    assert int(jax.device_get(result.state.step)) == 8
    assert "time budget of 0 s reached after epoch 1 of 2" in capsys.readouterr().err
    assert TrainConfig(time_budget=300).time_budget == 300
