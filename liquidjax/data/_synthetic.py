"""Synthetic sequence tasks with irregular sampling and variable lengths, generated from a seed.

Each returns a :class:`SequenceData` ``(x, timespans, mask, y)`` where ``x`` is ``float32
(n, L, C)``, ``timespans`` ``float32 (n, L)`` holds the elapsed time since the previous
observation (ncps "timespans"), and ``mask`` ``bool (n, L)`` marks real observations. Padded
steps (``mask == False``) sit at the end, carry ``x = 0`` and ``timespans = 1`` (positive, so a
cell that checks ``dt > 0`` accepts them; mask their outputs/loss).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class SequenceData(NamedTuple):
    """A batch of (possibly irregular, padded) sequences and their targets.

    **Fields:**
    - `x`: ``float32 (n, L, C)`` observations.
    - `timespans`: ``float32 (n, L)`` time elapsed since the previous observation (> 0).
    - `mask`: ``bool (n, L)``, ``True`` for real observations (a prefix of each row).
    - `y`: targets: ``int32 (n,)`` class labels, or ``float32 (n, L, D)`` per-step regression
      targets.
    """

    x: np.ndarray
    timespans: np.ndarray
    mask: np.ndarray
    y: np.ndarray


def _lengths(rng: np.random.Generator, n: int, min_length: int, max_length: int) -> np.ndarray:
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    return rng.integers(min_length, max_length + 1, n)


def _irregular_times(
    rng: np.random.Generator, lengths: np.ndarray, max_length: int, mean_dt: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example irregular gaps (exponential, floored at 5 % of the mean) and the masks."""
    n = lengths.shape[0]
    mask = np.arange(max_length)[None, :] < lengths[:, None]
    dt = mean_dt * (0.05 + rng.exponential(0.95, (n, max_length)))
    dt = np.where(mask, dt, 1.0)
    t = np.cumsum(np.where(mask, dt, 0.0), axis=1)
    return t, dt.astype(np.float32), mask


def irregular_sine(
    n: int,
    *,
    seed: int = 0,
    num_classes: int = 3,
    min_length: int = 16,
    max_length: int = 64,
    noise: float = 0.1,
) -> SequenceData:
    """Classify irregularly sampled sine waves by frequency.

    Class k has frequency ``f_k = 0.5 + k`` cycles per unit time (k < `num_classes`); each
    example ``sin(2π f_k t + φ) + ε`` has a random phase φ, its own irregular sampling times
    (exponential gaps, mean 0.1) and a random length in ``[min_length, max_length]``, padded to
    `max_length`. Telling classes apart needs the timespans: the values alone at unknown times
    do not reveal the frequency.

    **Arguments:**
    - `n`: number of examples.
    - `seed`: integer seed; the same seed gives the same data.
    - `num_classes`: number of frequencies.
    - `min_length`, `max_length`: range of observed lengths.
    - `noise`: standard deviation of the additive Gaussian noise.

    **Returns:** :class:`SequenceData` with ``x (n, max_length, 1)``, ``y int32 (n,)``.

    Example:
        >>> x, dts, mask, y = irregular_sine(256, seed=0)
        >>> x.shape, y.max()
        ((256, 64, 1), 2)
    """
    rng = np.random.default_rng((seed, 1))
    y = rng.integers(0, num_classes, n)
    lengths = _lengths(rng, n, min_length, max_length)
    t, dt, mask = _irregular_times(rng, lengths, max_length, mean_dt=0.1)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    freq = (0.5 + y)[:, None]
    x = np.sin(2 * np.pi * freq * t + phase) + noise * rng.standard_normal((n, max_length))
    x = np.where(mask, x, 0.0)
    return SequenceData(x[..., None].astype(np.float32), dt, mask, y.astype(np.int32))


def two_spirals(
    n: int,
    *,
    seed: int = 0,
    min_length: int = 8,
    max_length: int = 32,
    turns: float = 2.0,
    noise: float = 0.02,
) -> SequenceData:
    """Classify which of two interleaved spirals a short trajectory runs along.

    Spiral ``k ∈ {0, 1}`` is ``r(θ) = θ / (2π turns)``, points ``r (cos(θ + kπ), sin(θ + kπ))``
    for ``θ ∈ [0, 2π turns]``. An example starts at a random angle and advances with irregular
    angular steps (the timespans), observed with Gaussian noise; lengths vary.

    **Arguments:**
    - `n`: number of examples; `seed`: integer seed.
    - `min_length`, `max_length`: range of lengths.
    - `turns`: turns of each spiral; `noise`: position noise.

    **Returns:** :class:`SequenceData` with ``x (n, max_length, 2)``, ``y int32 (n,)`` in {0, 1}.

    Example:
        >>> x, dts, mask, y = two_spirals(128, seed=1)
        >>> x.shape
        (128, 32, 2)
    """
    rng = np.random.default_rng((seed, 2))
    y = rng.integers(0, 2, n)
    lengths = _lengths(rng, n, min_length, max_length)
    theta_max = 2 * np.pi * turns
    _, dt, mask = _irregular_times(rng, lengths, max_length, mean_dt=0.15)
    # The first observation sits at the start angle; its timespan is the gap before it.
    steps = np.where(mask, dt, 0.0)
    steps[:, 0] = 0.0
    travel = np.cumsum(steps, axis=1)
    start = rng.uniform(0.1, 1.0, (n, 1)) * np.maximum(
        theta_max - travel.max(1, keepdims=True), 0.1
    )
    theta = start + travel
    r = theta / theta_max
    angle = theta + np.pi * y[:, None]
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=-1)
    x = x + noise * rng.standard_normal(x.shape)
    x = np.where(mask[..., None], x, 0.0)
    return SequenceData(x.astype(np.float32), dt, mask, y.astype(np.int32))


def noisy_oscillator(
    n: int,
    *,
    seed: int = 0,
    min_length: int = 32,
    max_length: int = 96,
    noise: float = 0.2,
) -> SequenceData:
    """Denoise a damped harmonic oscillator observed at irregular times (regression).

    Each example has its own angular frequency ω ∈ [1, 3], damping ζ ∈ [0, 0.3], amplitude and
    phase: ``p(t) = A e^{-ζωt} cos(ω_d t + φ)``, ``ω_d = ω√(1-ζ²)``. The input is
    ``p(t_k) + ε_k``; the target at each step is the clean ``p(t_k)``.

    **Arguments:**
    - `n`: number of examples; `seed`: integer seed.
    - `min_length`, `max_length`: range of lengths.
    - `noise`: observation noise standard deviation.

    **Returns:** :class:`SequenceData` with ``x (n, max_length, 1)`` and
    ``y float32 (n, max_length, 1)`` (zero on padded steps).

    Example:
        >>> x, dts, mask, y = noisy_oscillator(64, seed=0)
        >>> y.shape
        (64, 96, 1)
    """
    rng = np.random.default_rng((seed, 3))
    lengths = _lengths(rng, n, min_length, max_length)
    t, dt, mask = _irregular_times(rng, lengths, max_length, mean_dt=0.1)
    omega = rng.uniform(1.0, 3.0, (n, 1))
    zeta = rng.uniform(0.0, 0.3, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    clean = amp * np.exp(-zeta * omega * t) * np.cos(omega * np.sqrt(1 - zeta**2) * t + phase)
    x = clean + noise * rng.standard_normal(clean.shape)
    x, clean = np.where(mask, x, 0.0), np.where(mask, clean, 0.0)
    return SequenceData(
        x[..., None].astype(np.float32), dt, mask, clean[..., None].astype(np.float32)
    )
