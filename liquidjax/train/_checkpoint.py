"""Checkpoints: one self-describing file per save, written atomically and verified whole.

File layout (``ckpt-<step>.ljx``, format version 2)::

    b"LIQUIDJAX-CKP2\\n"             magic
    8 bytes, little-endian         length H of the header
    32 bytes                       SHA-256 of the H header bytes
    H bytes                        JSON header: format version, step/epoch, data-order state,
                                   model + train config, payload length and SHA-256, ...
    payload                        eqx.tree_serialise_leaves of the TrainState's *arrays*

The payload holds only array leaves (header ``"payload": "arrays"``): Python scalars in the
tree — integration settings such as a ``PIDController``'s tolerances, dropout rates — are
configuration, taken from the model being loaded into, so weights trained with one solver load
into the same model configured with another. The header records the wiring of every wired cell
(``"wirings"``, each :class:`~liquidjax.wirings.Wiring`'s repr: kind, arguments, seed, input
size); loading into a model with other wirings is refused, naming both.

Every byte is covered: the header by the digest before it, the payload by the digest in the
header, the header length by both (a wrong length reads other bytes as the header). Version 1
files (magic ``b"LIQUIDJAX-CKPT\\n"``, no header digest: only the payload was verified) are still
read.

A save writes ``.ckpt-<step>.ljx.tmp``, fsyncs it, ``os.replace``-s it to its final name and
fsyncs the directory; only then are checkpoints beyond the newest ``keep`` deleted. A process
killed at any point therefore leaves every earlier checkpoint intact, and at worst a stale
temporary file (ignored, and cleaned up by the next save).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import struct
import time
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import numpy as np

from ..wirings import Wiring
from ._step import TrainState

MAGIC = b"LIQUIDJAX-CKP2\n"
MAGIC_V1 = b"LIQUIDJAX-CKPT\n"  # format 1: the header was not covered by a checksum
FORMAT_VERSION = 2
_DIGEST = 32
_MIN_PARAM_BYTES = 2  # every unit has at least one parameter, of at least 16 bits
SUFFIX = ".ljx"
_NAME = re.compile(r"^ckpt-(\d+)\.ljx$")
_TMP = re.compile(r"^\..+\.ljx\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, corrupt, of another format, or for another model.

    The message names the file and what is wrong (for a config mismatch: each differing field
    with the checkpoint's and the requested value).

    **Attributes:** `path` — the offending file.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt-{int(step):09d}{SUFFIX}"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint files in `directory`, oldest first (by step)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), d / p) for p in os.listdir(d) if (m := _NAME.match(p))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint in `directory`, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _to_host(tree: Any) -> Any:
    # Replicated global arrays are fully addressable on every process; gather to NumPy once.
    return jax.tree_util.tree_map(
        lambda x: np.asarray(jax.device_get(x)) if eqx.is_array(x) else x, tree
    )


def wiring_signature(tree: Any) -> list[str]:
    """The distinct wirings held anywhere in `tree` (static fields of its Modules), as sorted
    reprs such as ``"AutoNCP(units=16, output_size=4, sparsity_level=0.5, seed=1).build(3)"``.
    Two models with the same signature have the same connectivity."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, Wiring):
            found.add(repr(x))
        elif isinstance(x, eqx.Module):
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name))
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(tree)
    return sorted(found)


# Integration settings are configuration, not identity: weights load across solvers.
_SETTINGS = (diffrax.AbstractSolver, diffrax.AbstractStepSizeController, diffrax.AbstractAdjoint)


def _callable_name(fn: Any) -> str:
    inner = getattr(fn, "func", None)  # functools.partial
    if inner is not None and callable(inner):
        return f"partial({_callable_name(inner)})"
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def model_signature(model: Any) -> dict[str, str]:
    """What a model *is*, beyond its array shapes: the class of every Module in it and the name
    of every function it holds (activations), by path, e.g. ``{"model.layers[0].cell": "CfC",
    "model.layers[0].cell.activation": "lecun_tanh", ...}``. Integration settings (diffrax
    solvers, step-size controllers, adjoints) are left out: weights load across them."""
    out: dict[str, str] = {}

    def walk(x: Any, path: str) -> None:
        if isinstance(x, _SETTINGS):
            return
        if isinstance(x, eqx.Module):
            out[path] = type(x).__name__
            for f in dataclasses.fields(x):
                walk(getattr(x, f.name, None), f"{path}.{f.name}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}[{k!r}]")
        elif callable(x) and not isinstance(x, type) and not eqx.is_array(x):
            out[path] = _callable_name(x)

    walk(model, "model")
    return out


def _model_of(tree: Any) -> Any:
    return tree.model if isinstance(tree, TrainState) else tree


def _array_bytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize
               for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array)))


def check_model_identity(path: str | os.PathLike, header: dict[str, Any], like: Any) -> None:
    """Refuse `path` for the model `like` (or the model of a :class:`TrainState`) when its
    parameters need more bytes than the checkpoint's payload holds, or when the classes or
    functions recorded in the header (:func:`model_signature`) differ from `like`'s, naming
    each difference (``activation lecun_tanh vs relu``)."""
    model = _model_of(like)
    need = _array_bytes(model)
    if need > header["payload_bytes"]:
        raise CheckpointError(
            path, f"the model to load into has {need} bytes of parameters, more than the "
            f"checkpoint's whole payload ({header['payload_bytes']} bytes): it was written for "
            "a smaller model")
    saved = header.get("model_signature")
    if not isinstance(saved, dict):  # written before signatures were recorded
        return
    mine = model_signature(model)
    diff = [p for p in sorted(saved.keys() & mine.keys()) if saved[p] != mine[p]]
    # A different class at a path makes what lies below it differ too: name only the topmost.
    top = [f"{p} {saved[p]} vs {mine[p]}" for p in diff
           if not any(p.startswith((o + ".", o + "[")) for o in diff)]
    if top:
        raise CheckpointError(path, "it was written for a different model (checkpoint vs the "
                              "model to load into): " + "; ".join(top))


def save_checkpoint(
    directory: str | os.PathLike,
    state: Any,
    header: dict[str, Any],
    *,
    keep: int = 3,
    name: str | None = None,
) -> Path:
    """Atomically write `state` (a pytree, e.g. a :class:`TrainState`) with `header` metadata.

    **Arguments:**
    - `directory`: where checkpoints live (created if needed).
    - `state`: the pytree to save; ``header["step"]`` names the file.
    - `header`: JSON-serialisable metadata (must contain ``"step"``).
    - `keep`: keep this many newest checkpoints; older ones are removed after the new one is
      complete.
    - `name`: write ``<name>.ljx`` instead of ``ckpt-<step>.ljx`` (e.g. ``"best"``); such a
      file is neither listed by :func:`list_checkpoints` nor pruned.

    A failed write (e.g. a full disk) removes its partial temporary file and re-raises; the
    checkpoints written before are untouched.

    **Returns:** the path written. Only process 0 writes in a multi-process run.

    **Example:**
    ```python
    path = save_checkpoint("runs/x/checkpoints", state, {"step": 100, "epoch": 1})
    ```
    """
    d = Path(directory)
    path = checkpoint_path(d, header["step"]) if name is None else d / f"{name}{SUFFIX}"
    host_state = _to_host(state)
    if jax.process_index() != 0:
        return path
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, eqx.filter(host_state, eqx.is_array))
    payload = buf.getvalue()
    full = dict(header)
    full.update(
        payload="arrays",
        wirings=wiring_signature(state),
        model_signature=model_signature(_model_of(state)),
        format_version=FORMAT_VERSION,
        payload_bytes=len(payload),
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    head = json.dumps(full, sort_keys=True).encode()
    tmp = d / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + hashlib.sha256(head).digest() + head)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no partial file is left behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    if name is None:
        for old in list_checkpoints(d)[:-keep] if keep > 0 else []:
            if old != path:
                old.unlink(missing_ok=True)
    for other in os.listdir(d):  # temporaries of a killed earlier save
        if _TMP.match(other) and other != tmp.name:
            (d / other).unlink(missing_ok=True)
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a checkpoint, verified against its checksum (the payload is not read).
    Raises :class:`CheckpointError`."""
    header, _ = _read_or_point_elsewhere(path, with_payload=False)
    return header


def verified_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints in `directory` whose whole file (header and payload) verifies, oldest
    first."""
    good = []
    for p in list_checkpoints(directory):
        try:
            _read(p, with_payload=True)
        except CheckpointError:
            continue
        good.append(p)
    return good


def _read_or_point_elsewhere(path, *, with_payload: bool) -> tuple[dict[str, Any], bytes]:
    """`_read`; a corrupt file's error also names the checkpoints beside it that verify."""
    try:
        return _read(path, with_payload=with_payload)
    except CheckpointError as e:
        p = Path(path)
        if not p.is_file():
            raise
        others = [q for q in verified_checkpoints(p.parent) if q != p]
        hint = ("; the checkpoints beside it that verify are " + ", ".join(q.name for q in others)
                + f" — continue from one of them (e.g. --resume {others[-1]})" if others
                else "; no other checkpoint beside it verifies")
        raise CheckpointError(p, e.problem + hint) from None


def _check_header(p: Path, header: Any, version: int) -> dict[str, Any]:
    if not isinstance(header, dict):
        raise CheckpointError(p, f"corrupt header: a JSON {type(header).__name__}, not an object")
    if header.get("format_version") != version:
        raise CheckpointError(
            p, f"format version {header.get('format_version')!r} in a version {version} file"
        )
    want = {"payload_bytes": int, "payload_sha256": str, "step": int}
    bad = [f"{k}={header.get(k)!r}" for k, t in want.items()
           if not isinstance(header.get(k), t) or isinstance(header.get(k), bool)]
    if bad or header["payload_bytes"] < 0 or header["step"] < 0:
        raise CheckpointError(p, "corrupt header: " + (", ".join(bad) or "negative sizes"))
    config = header.get("model_config")
    units = config.get("units") if isinstance(config, dict) else None
    if isinstance(units, int) and units * _MIN_PARAM_BYTES > header["payload_bytes"]:
        # Checked before any model is built from the header: a crafted size must not make the
        # reader allocate (or initialise) a huge model first.
        raise CheckpointError(
            p, f"corrupt header: its model_config says units={units}, which needs at least "
            f"{units * _MIN_PARAM_BYTES} bytes of parameters, but the payload holds "
            f"{header['payload_bytes']}")
    return header


def _read(path: str | os.PathLike, *, with_payload: bool) -> tuple[dict[str, Any], bytes]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, "no such file" if not p.exists() else "not a file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            return _read_open(p, f, size, with_payload)
    except OSError as e:
        raise CheckpointError(p, f"cannot be read ({e.strerror or e})") from None


def _read_open(p: Path, f, size: int, with_payload: bool) -> tuple[dict[str, Any], bytes]:
    magic = f.read(len(MAGIC))
    if magic not in (MAGIC, MAGIC_V1):
        raise CheckpointError(p, "not a liquidjax checkpoint (bad magic bytes)")
    version = FORMAT_VERSION if magic == MAGIC else 1
    raw = f.read(8)
    if len(raw) != 8:
        raise CheckpointError(p, "truncated header")
    (n,) = struct.unpack("<Q", raw)
    digest = f.read(_DIGEST) if version >= 2 else b""
    room = size - f.tell()
    if n > room:  # checked before reading: a corrupt length must not allocate n bytes
        raise CheckpointError(
            p, f"corrupt or truncated header: its length field says {n} bytes, the file has "
            f"{max(room, 0)} left"
        )
    head = f.read(n)
    if version >= 2 and hashlib.sha256(head).digest() != digest:
        raise CheckpointError(
            p, "checksum mismatch in the header (its SHA-256 differs from the stored one): the "
            "file is corrupt"
        )
    try:
        header = json.loads(head)
    except ValueError as e:
        raise CheckpointError(p, f"corrupt header ({e})") from None
    header = _check_header(p, header, version)
    want, have = header["payload_bytes"], size - f.tell()
    if have < want:
        raise CheckpointError(p, f"truncated payload: expected {want} bytes, the file has {have}")
    if have > want:
        raise CheckpointError(
            p, f"{have - want} unexpected bytes after the payload (the header says {want}): "
            "something was appended to the file")
    payload = f.read(want) if with_payload else b""
    if with_payload:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != header["payload_sha256"]:
            raise CheckpointError(
                p, f"checksum mismatch (payload SHA-256 {digest}, header says "
                f"{header['payload_sha256']}): the file is corrupt"
            )
    return header, payload


def config_mismatches(saved: dict[str, Any], wanted: dict[str, Any], fields=None, *,
                      style: str = "long") -> list[str]:
    """``"name: checkpoint has A, requested B"`` for each differing field (``style="short"``:
    ``"name A vs B"``)."""
    saved = saved if isinstance(saved, dict) else {}  # a malformed header differs everywhere
    names = sorted(set(saved) | set(wanted)) if fields is None else list(fields)
    out = []
    for k in names:
        a, b = saved.get(k), wanted.get(k)
        if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):
            out.append(f"{k} {_plain(a)} vs {_plain(b)}" if style == "short"
                       else f"{k}: checkpoint has {a!r}, requested {b!r}")
    return out


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def load_checkpoint(
    path: str | os.PathLike,
    like: Any,
    *,
    model_config: dict[str, Any] | None = None,
    prefix: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into a pytree shaped like `like`, after checking it.

    **Arguments:**
    - `path`: the checkpoint file.
    - `like`: a pytree with the same structure, shapes and dtypes (e.g. a fresh
      :class:`TrainState` of the same model and optimiser).
    - `model_config`: if given, must equal the checkpoint's ``"model_config"``.
    - `prefix`: read only the first leaves of the payload, as many as `like` has (e.g. just the
      model of a saved :class:`TrainState`, whose first field it is).

    **Returns:** ``(state, header)``.

    Raises :class:`CheckpointError` naming the file and the problem: bad magic or version,
    truncation, checksum mismatch, a different model config (each differing field), other
    wirings (both named), or leaves whose shapes/dtypes do not match. Integration settings are
    not part of a checkpoint: the loaded state keeps those of `like`.

    **Example:**
    ```python
    state, header = load_checkpoint(latest_checkpoint("runs/x/checkpoints"), fresh_state)
    ```
    """
    header, payload = _read_or_point_elsewhere(path, with_payload=True)
    check_model_identity(path, header, like)
    if model_config is not None:
        diff = config_mismatches(header.get("model_config") or {}, model_config)
        if diff:
            raise CheckpointError(
                path, "it was written for a different model:\n  " + "\n  ".join(diff)
            )
    saved_wirings, wanted_wirings = header.get("wirings"), wiring_signature(like)
    if saved_wirings is not None and saved_wirings != wanted_wirings:
        raise CheckpointError(
            path, f"it was written for a model with wiring(s) {saved_wirings}, but the model to "
            f"load into has {wanted_wirings}: build it with the checkpoint's wiring "
            "(same kind, arguments, seed and input size)"
        )
    arrays_only = header.get("payload") == "arrays"  # older files hold every leaf
    stream = io.BytesIO(payload)
    try:
        target = eqx.filter(like, eqx.is_array) if arrays_only else like
        state = eqx.tree_deserialise_leaves(stream, target)
        if arrays_only:
            state = eqx.combine(state, eqx.filter(like, eqx.is_array, inverse=True))
        if not prefix and stream.tell() != len(payload):
            raise ValueError(
                f"{len(payload) - stream.tell()} bytes left over after the expected leaves"
            )
    except Exception as e:  # equinox raises various errors for structural mismatches
        raise CheckpointError(
            path, f"its contents do not match the expected model/optimiser state ({e})"
        ) from None
    return state, header
