"""Irregularly sampled tasks from the papers, generated offline from a seed (or from images).

* :func:`event_xor` and :func:`event_sequential_mnist` — the event-based encodings of Lechner &
  Hasani (2020), "Learning Long-Term Dependencies in Irregularly-Sampled Time Series"
  (ODE-LSTM, arXiv:2006.04418): a dense binary stream is kept only where it changes, and each
  kept event carries the time elapsed since the previous one, so the answer depends on the
  timespans (a model that ignores them cannot solve the task).
* :func:`irregular_oscillators` — a regression task with irregular times and missing channels.

All return :class:`~liquidjax.data.TimeSeriesData`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._timeseries import TimeSeriesData


def _compact_events(values: np.ndarray, is_event: np.ndarray, pad: int):
    """Keep the flagged steps of each row, in order, left-aligned in ``pad`` slots.

    Returns ``(events (n, pad), elapsed (n, pad), lengths (n,))`` where ``elapsed`` is the
    number of dense steps since the previous kept step (the first counts from step −1).
    """
    n, dense = values.shape
    pos = np.arange(dense)
    # Previous kept position for each kept step: a running max over kept positions, shifted.
    kept_pos = np.where(is_event, pos, -1)
    prev = np.maximum.accumulate(np.concatenate([np.full((n, 1), -1), kept_pos[:, :-1]], 1), 1)
    elapsed_dense = (pos - prev).astype(np.float32)
    order = np.argsort(~is_event, axis=1, kind="stable")[:, :pad]
    lengths = np.minimum(is_event.sum(1), pad)
    take = np.arange(order.shape[1])[None] < lengths[:, None]
    events = np.where(take, np.take_along_axis(values, order, 1), 0.0)
    elapsed = np.where(take, np.take_along_axis(elapsed_dense, order, 1), 1.0)
    if order.shape[1] < pad:
        extra = pad - order.shape[1]
        events = np.pad(events, ((0, 0), (0, extra)))
        elapsed = np.pad(elapsed, ((0, 0), (0, extra)), constant_values=1.0)
    return events.astype(np.float32), elapsed.astype(np.float32), lengths.astype(np.int64)


def event_xor(n: int, *, seed: int = 0, max_length: int = 32) -> TimeSeriesData:
    """Event-based XOR (parity) of a random bit stream (ODE-LSTM paper, Lechner & Hasani 2020).

    A dense stream of ``m ∈ [2, max_length − 1]`` random bits is encoded as events: one at every
    bit that differs from its predecessor (the first bit always), carrying the new bit and the
    number of dense steps since the previous event; if the stream ends inside a run, a final
    event repeats the last bit with the run's remaining length. The label is the parity of the
    number of ones, ``Σ bits mod 2`` — the sum over runs of ``bit × run length``, which needs the
    elapsed times. Timespans are the elapsed counts divided by `max_length` (as in the paper's
    files; the encoding is the paper's ``XORData``, event for event). The answer hangs on the
    parity of each count, which models resolve far more easily with time in dense steps —
    ``make_time_series_task(..., normalize_time=True)`` divides by the median gap, one step —
    than in these units (GRU-D: 0.94 against 0.76 test accuracy after the same 6k steps; see
    ``benchmarks/irregular.py``). The papers train on 100k sequences for 200 epochs.

    **Arguments:**
    - `n`: examples; `seed`: integer seed.
    - `max_length`: padded number of events (the paper's ``pad_size``; ≥ 3).

    **Returns:** :class:`TimeSeriesData` with ``x (n, max_length, 1)`` (the bit of each event),
    ``y`` in {0, 1}.

    Example:
        >>> d = event_xor(1000, seed=0)
        >>> d.x.shape, d.num_classes
        ((1000, 32, 1), 2)
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    rng = np.random.default_rng((seed, 11))
    dense = max_length - 1
    m = rng.integers(2, dense + 1, n)
    bits = rng.integers(0, 2, (n, dense)).astype(np.float32)
    pos = np.arange(dense)[None]
    inside = pos < m[:, None]
    bits = np.where(inside, bits, 0.0)
    change = np.concatenate([np.ones((n, 1), bool), bits[:, 1:] != bits[:, :-1]], 1) & inside
    is_event = change | ((pos == m[:, None] - 1) & inside)
    events, elapsed, lengths = _compact_events(bits, is_event, max_length)
    y = (bits.sum(1).astype(np.int64)) % 2
    return TimeSeriesData(events[..., None], elapsed / max_length, lengths, y, "classification",
                          2, class_names=("even", "odd"), name="event_xor",
                          source=f"event_xor(seed={seed})")


def event_sequential_mnist(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    max_length: int = 256,
    threshold: int = 128,
    num_classes: int = 10,
) -> TimeSeriesData:
    """Event-based sequential (Fashion-)MNIST (ODE-LSTM paper, Lechner & Hasani 2020).

    Each image is read pixel by pixel in raster order and binarised (``pixel > threshold``);
    an event is kept wherever the binary value changes (the first pixel always), carrying the
    new value and the number of pixels since the previous event. At most `max_length` events
    are kept (the paper's ``pad_size`` 256); timespans are the counts divided by `max_length`.

    **Arguments:**
    - `images`: ``uint8 (n, H, W)`` or ``(n, H, W, 1)`` (e.g.
      ``load_dataset("mnist", "train", data_dir).images``; no network needed with local files).
    - `labels`: ``(n,)`` class labels.
    - `max_length`, `threshold`, `num_classes`: as above.

    **Returns:** :class:`TimeSeriesData` with ``x (n, max_length, 1)``.

    Example:
        >>> ds = load_dataset("fashion_mnist", "test", "/usr/share/datasets/fashion-mnist")
        ... # doctest: +SKIP
        >>> d = event_sequential_mnist(ds.images, ds.labels)  # doctest: +SKIP
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W) or (n, H, W, 1), got {images.shape}")
    flat = (images.reshape(images.shape[0], -1) > threshold).astype(np.float32)
    change = np.concatenate([np.ones((flat.shape[0], 1), bool), flat[:, 1:] != flat[:, :-1]], 1)
    events, elapsed, lengths = _compact_events(flat, change, max_length)
    return TimeSeriesData(events[..., None], elapsed / max_length, lengths,
                          np.asarray(labels).astype(np.int64), "classification", num_classes,
                          name="event_sequential_mnist", source="images")


def irregular_oscillators(
    n: int,
    *,
    seed: int = 0,
    channels: int = 3,
    min_length: int = 16,
    max_length: int = 48,
    missing: float = 0.5,
    noise: float = 0.1,
    target: Literal["signal", "frequency"] = "signal",
) -> TimeSeriesData:
    """Regression on coupled oscillators sampled at irregular times with missing channels.

    Every example has one angular frequency ω ∈ [1, 4] and damping ζ ∈ [0, 0.2]; channel ``c``
    is ``p_c(t) = A_c e^{−ζωt} cos(ω t + φ_c)``. It is observed at irregular times (exponential
    gaps, mean 0.15) with noise; each value is missing (NaN) with probability `missing`,
    independently, except that every step keeps at least one channel. So each channel alone is
    sparse, but the shared frequency ties the channels together.

    **Arguments:**
    - `n`, `seed`: examples and integer seed.
    - `channels`: number of channels.
    - `min_length`, `max_length`: range of lengths.
    - `missing`: probability that a value is not observed.
    - `noise`: observation noise standard deviation.
    - `target`: ``"signal"`` — per-step targets ``(n, L, channels)``: the clean value of every
      channel at every valid step (denoise and impute); ``"frequency"`` — one target per
      sequence, ``ω``.

    **Returns:** a regression :class:`TimeSeriesData`.

    Example:
        >>> d = irregular_oscillators(64, seed=0)
        >>> d.x.shape, d.y.shape, bool(np.isnan(d.x[d.mask]).any())
        ((64, 48, 3), (64, 48, 3), True)
    """
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing must be in [0, 1), got {missing}")
    if target not in ("signal", "frequency"):
        raise ValueError(f"target must be 'signal' or 'frequency', got {target!r}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    rng = np.random.default_rng((seed, 12))
    lengths = rng.integers(min_length, max_length + 1, n)
    valid = np.arange(max_length)[None] < lengths[:, None]
    dt = 0.15 * (0.1 + rng.exponential(0.9, (n, max_length)))
    t = np.cumsum(np.where(valid, dt, 0.0), 1)[..., None]
    omega = rng.uniform(1.0, 4.0, (n, 1, 1))
    zeta = rng.uniform(0.0, 0.2, (n, 1, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1, channels))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    clean = amp * np.exp(-zeta * omega * t) * np.cos(omega * t + phase)
    observed = rng.random(clean.shape) >= missing
    keep = rng.integers(0, channels, (n, max_length))
    observed[np.arange(n)[:, None], np.arange(max_length)[None], keep] = True
    x = np.where(observed, clean + noise * rng.standard_normal(clean.shape), np.nan)
    if target == "signal":
        y = np.where(valid[..., None], clean, 0.0).astype(np.float32)
    else:
        y = omega[:, 0, 0].astype(np.float32)
    return TimeSeriesData(x, np.where(valid, dt, 1.0), lengths, y, "regression",
                          name="irregular_oscillators", source=f"seed={seed}")
