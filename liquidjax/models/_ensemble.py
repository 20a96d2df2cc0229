"""An ensemble of independently initialised and trained copies of one model.

Small training sets (the UEA/UCR archives: a few dozen series) leave a single network's test
accuracy at the mercy of its initialisation: the same command moves by several points from one
seed to the next. Averaging the predictions of a few independently trained copies removes most
of that spread and raises the mean (Lakshminarayanan et al. 2017, "Simple and Scalable
Predictive Uncertainty Estimation using Deep Ensembles"; the InceptionTime ensembles of Fawaz
et al. 2020 for time-series classification). ``docs/time_series.md`` has the measurements.

The members are one model whose every array carries a leading member axis (``eqx.filter_vmap``
of the single-model constructor), so the ensemble is one pytree: one optimiser state, one
checkpoint, one ``jit``. Each member is trained on its own loss, exactly as it would be alone
on the same batches: the trainer maps the members outside the batch (so each member's batch
goes through the cells' batched fast paths), differentiates the sum of the members' losses (it
records their mean) and clips each member's gradient by its
own norm (:func:`liquidjax.train.clip_by_member_norm`) — not the loss of the averaged
prediction, which would train the members jointly and lose their independence. The ensemble
predicts

* class logits: ``log mean_k softmax(logits_k)`` — the log of the members' mean probability
  (so ``softmax`` of the output is that mean, and its ``argmax`` the ensemble's vote);
* real predictions: the members' mean; with a predicted variance (``[μ | v]`` outputs, see
  :func:`liquidjax.train.split_gaussian`) the mixture's mean and variance
  ``mean_k σ²_k + mean_k (μ_k − μ)²``, written back in the same ``[μ | v]`` form.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._metrics import VARIANCE_FLOOR, split_gaussian
from ._classifier import AbstractClassifier


class AbstractEnsemble(AbstractClassifier):
    """The contract of a model made of independently trained members: how the trainer maps and
    combines them.

    A model that is not an ensemble needs nothing: the trainer calls it on each example of a
    batch and trains it on the mean loss. An ensemble declares instead

    * `members`: the members as one model whose every array carries a leading member axis;
    * `size`: how many members;
    * :meth:`combine`: its prediction from the members' outputs stacked on axis 0;

    and the trainer then runs each member on the whole batch (members mapped outside the batch),
    trains each on its own loss (the objective is the sum of the members' mean losses, so each
    member's gradient is the one it would get alone; the loss recorded is their mean), clips each
    member's gradient by its own norm, and scores the combined prediction.
    """

    members: eqx.AbstractVar[AbstractClassifier]
    size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def combine(self, outputs: Array, mask: Bool[Array, "*batch time"] | None = None) -> Array:
        """The ensemble's prediction from its members' outputs stacked on axis 0."""

    def stream_spec(self):
        """Refused: the members' states are independent (step a member instead)."""
        raise ValueError(
            f"an Ensemble of {self.size} members has no single state to step; export one "
            "member, model.member(i), or each member separately")


class Ensemble(AbstractEnsemble):
    """``size`` copies of one classifier (stacked on a leading axis) whose predictions are
    averaged; see the module docs for how.

    **Arguments:**
    - `members`: the copies as one classifier whose array leaves have a leading axis of
      ``size`` (build it with :meth:`create`).
    - `task`: ``"classification"`` or ``"regression"``.
    - `predict_variance`: regression outputs are ``[μ | v]`` (mean and variance).

    **Example:**
    ```python
    ens = Ensemble.create(lambda k: build_model(config, key=k), 5, key=jax.random.key(0),
                          task="classification")
    logits = jax.vmap(ens)(xs)          # log of the members' mean class probabilities
    ```
    """

    members: AbstractClassifier
    size: int = eqx.field(static=True)
    task: str = eqx.field(static=True)
    predict_variance: bool = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)

    def __init__(self, members: AbstractClassifier, *, task: str = "classification",
                 predict_variance: bool = False):
        sizes = {leaf.shape[0] if leaf.ndim else None
                 for leaf in jax.tree_util.tree_leaves(eqx.filter(members, eqx.is_array))}
        if len(sizes) != 1 or None in sizes:
            raise ValueError("Ensemble members must be one model whose every array has the same "
                             f"leading (member) axis; got leading sizes {sorted(map(str, sizes))}; "
                             "build it with Ensemble.create")
        self.members = members
        self.size = int(sizes.pop())
        self.task = task
        self.predict_variance = bool(predict_variance)
        self.num_classes = int(members.num_classes)

    def __check_init__(self):
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.size < 1:
            raise ValueError(f"an ensemble needs at least one member, got {self.size}")

    @classmethod
    def create(cls, make, size: int, *, key: PRNGKeyArray, task: str = "classification",
               predict_variance: bool = False) -> Ensemble:
        """``size`` members ``make(k)`` from independent keys, stacked into one :class:`Ensemble`.
        `make` must build the same structure for every key (its static configuration may not
        depend on the key)."""
        if int(size) < 1:
            raise ValueError(f"an ensemble needs at least one member, got size={size}")
        members = eqx.filter_vmap(make)(jax.random.split(key, int(size)))
        return cls(members, task=task, predict_variance=predict_variance)

    def member(self, i: int) -> AbstractClassifier:
        """The ``i``-th member as a plain model (to inspect, plot or export one network)."""
        if not -self.size <= i < self.size:
            raise IndexError(f"member {i} of an ensemble of {self.size}")
        arrays, static = eqx.partition(self.members, eqx.is_array)
        return eqx.combine(jax.tree_util.tree_map(lambda a: a[i], arrays), static)

    @property
    def fits_from_data(self) -> bool:
        return self.members.fits_from_data

    @property
    def fitted_to_data(self) -> bool:
        return self.members.fitted_to_data

    def init_from_data(self, x, mask, *, key):
        """Each member fits what it fits from the training inputs, with its own key."""
        members = eqx.filter_vmap(
            lambda m, k: m.init_from_data(x, mask, key=k), in_axes=(eqx.if_array(0), 0)
        )(self.members, jax.random.split(key, self.size))
        return eqx.tree_at(lambda e: e.members, self, members)

    def combine(self, outputs: Array, mask: Bool[Array, "*batch time"] | None = None) -> Array:
        """The ensemble's prediction from its members' outputs stacked on axis 0 (one example,
        or a batch); per-step outputs are zero on the steps `mask` marks invalid, as a single
        model's are."""
        out = self._average(jnp.asarray(outputs))
        if mask is not None and out.ndim == mask.ndim + 1:  # per-step outputs
            out = jnp.where(mask[..., None], out, 0)
        return out

    def _average(self, outputs: Array) -> Array:
        if self.task == "classification":
            logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
            out = jax.nn.logsumexp(logp, axis=0) - jnp.log(float(outputs.shape[0]))
            return out.astype(outputs.dtype)
        if not self.predict_variance:
            return jnp.mean(outputs, axis=0)
        mu, var = split_gaussian(outputs)
        mean = jnp.mean(mu, axis=0)
        spread = mu - mean
        mix_var = jnp.mean(var, axis=0) + jnp.mean(spread * spread, axis=0)
        # The inverse of split_gaussian's softplus(v) + floor, stable for large variances.
        v = jnp.maximum(mix_var - VARIANCE_FLOOR, jnp.finfo(outputs.dtype).tiny)
        raw = v + jnp.log(-jnp.expm1(-v))
        return jnp.concatenate([mean, raw], axis=-1)

    def __call__(
        self,
        x: Array,
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Array:
        """The ensemble's outputs for one example (see the module docs)."""
        keys = None if key is None else jax.random.split(key, self.size)
        outputs = eqx.filter_vmap(lambda member, k: member(x, timespans, mask, key=k))(
            self.members, keys)
        return self.combine(outputs, mask)
