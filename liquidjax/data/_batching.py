"""Seeded, resumable batching over in-memory arrays.

The state of an epoch is two integers, ``(epoch, step)``. Batch ``step`` of ``epoch`` depends
only on ``(seed, epoch, step)``: the order is ``np.random.default_rng((seed, epoch))
.permutation(n)`` and any per-batch randomness (augmentation) comes from
``np.random.default_rng((seed, epoch, step))``. So a run killed after step k and resumed with
``loader.epoch(e, start_step=k + 1)`` sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

Transform = Callable[[Any, np.random.Generator], Any]


class Batch(NamedTuple):
    """One batch.

    **Fields:**
    - `data`: the data pytree with every leaf indexed to a leading axis of `batch_size` (after
      the loader's transform, if any).
    - `mask`: ``bool (batch_size,)``; ``False`` marks filler rows of a padded final batch.
    - `epoch`, `step`: where this batch sits; ``step`` counts from 0 within the epoch.
    """

    data: Any
    mask: np.ndarray
    epoch: int
    step: int


class Loader:
    """Batches over a pytree of NumPy arrays sharing their leading axis.

    Shuffling (training) draws a fresh permutation per epoch from
    ``np.random.default_rng((seed, epoch))``; without shuffling the order is the stored order.
    The final partial batch is either dropped (``drop_last=True``, for training) or **padded**
    to the full `batch_size` by repeating real examples, with ``mask`` ``False`` on the filler
    rows (evaluation: constant shapes, so a jitted step compiles once; weigh metrics by `mask`).
    Batches are gathered with one fancy index per leaf.

    The loader holds no iteration state: ask for ``loader.epoch(e, start_step=s)`` (or
    ``loader.batch(e, s)``) and store ``(epoch, step)`` in checkpoints.

    **Arguments:**
    - `data`: pytree (tuple, dict, NamedTuple, ...) of arrays with equal leading size ``n``.
    - `batch_size`: examples per batch.
    - `seed`: integer seed for order and transforms.
    - `shuffle`: permute per epoch (else keep order).
    - `drop_last`: drop the final partial batch (else pad it and mask).
    - `transform`: optional ``transform(data, rng) -> data`` applied to each gathered batch,
      with ``rng = np.random.default_rng((seed, epoch, step))`` (e.g. augmentation).

    Example:
        >>> loader = Loader((x, y), batch_size=128, seed=0)  # doctest: +SKIP
        >>> for batch in loader.epoch(0):
        ...     (xb, yb), mask = batch.data, batch.mask
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        transform: Transform | None = None,
    ):
        leaves = jax.tree_util.tree_leaves(data)
        if not leaves:
            raise ValueError("data has no arrays")
        sizes = {np.shape(leaf)[0] for leaf in leaves}
        if len(sizes) != 1:
            raise ValueError(f"all arrays must share the leading size, got sizes {sorted(sizes)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = jax.tree_util.tree_map(np.asarray, data)
        self.num_examples = sizes.pop()
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        if drop_last and self.num_examples < batch_size:
            raise ValueError(
                f"drop_last with {self.num_examples} examples < batch_size {batch_size} "
                "would give no batches"
            )

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def order(self, epoch: int) -> np.ndarray:
        """The example order of `epoch` (a permutation of ``range(n)``)."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng((self.seed, int(epoch))).permutation(self.num_examples)

    def _gather(self, order: np.ndarray, epoch: int, step: int) -> Batch:
        if not 0 <= step < self.num_batches:
            raise IndexError(f"step {step} out of range: an epoch has {self.num_batches} batches")
        idx = order[step * self.batch_size : (step + 1) * self.batch_size]
        mask = np.ones(self.batch_size, bool)
        if idx.shape[0] < self.batch_size:
            mask[idx.shape[0] :] = False
            idx = np.resize(idx, self.batch_size)  # repeat real examples as filler
        data = jax.tree_util.tree_map(lambda a: a[idx], self.data)
        if self.transform is not None:
            data = self.transform(data, np.random.default_rng((self.seed, int(epoch), int(step))))
        return Batch(data, mask, int(epoch), int(step))

    def batch(self, epoch: int, step: int) -> Batch:
        """Batch `step` of `epoch` (random access)."""
        return self._gather(self.order(epoch), epoch, step)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches ``start_step, ..., num_batches - 1`` of `epoch`, in order."""
        order = self.order(epoch)
        for step in range(start_step, self.num_batches):
            yield self._gather(order, epoch, step)
