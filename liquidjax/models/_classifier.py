"""Sequence classifiers: the classifier contract and liquid layers with a linear readout."""

from __future__ import annotations

import abc
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._checks import check_choice, literal_choices
from .._metrics import VARIANCE_FLOOR
from .._streaming import AbstractStreaming, StreamSpec
from ..layers import LiquidRNN

Readout = Literal["last", "mean"]
READOUTS: tuple[str, ...] = literal_choices(Readout)


class AbstractClassifier(AbstractStreaming):
    """A model of one example: ``model(x, timespans, mask, *, key) -> outputs``.

    The outputs are class logits or real predictions, ``(num_classes,)`` for the whole example
    or ``(L, num_classes)`` per step (``num_classes`` is the output width; for regression the
    target dimension, or twice it for a mean and a variance). ``key`` enables dropout
    (training); ``None`` means inference.
    """

    num_classes: eqx.AbstractVar[int]

    @abc.abstractmethod
    def __call__(
        self,
        x: Array,
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """The class logits of one example."""

    @property
    def fits_from_data(self) -> bool:
        """Whether :meth:`init_from_data` fits anything (then the trainer reads the training
        inputs once before training)."""
        return False

    @property
    def fitted_to_data(self) -> bool:
        """Whether what the model fits from data has been fitted (``True`` when there is
        nothing to fit)."""
        return True

    def init_from_data(self, x: Float[Array, "batch time input"],
                       mask: Bool[Array, "batch time"] | None, *, key: PRNGKeyArray
                       ) -> AbstractClassifier:
        """The model with whatever it fits from the training inputs `x` (as the model reads
        them, valid steps first as `mask` says) set; called once before training (not on
        resume: a checkpoint holds the fitted values). Nothing, unless a model overrides it
        (:class:`~liquidjax.models.RocketFeatures` behind a stem fits its biases and scales)."""
        del x, mask, key
        return self


def _dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def _pool(rnn: LiquidRNN, x, timespans, mask, readout: str, key) -> Array:
    """Run the last liquid layer and reduce its outputs to one feature vector."""
    if readout == "last":
        # With a mask the state stops changing after the last valid step, so the final state's
        # output is the output at the last valid observation.
        ys, h = rnn(x, timespans, mask, key=key)
        if not rnn.return_sequences:
            return ys
        y = rnn.cell.output(h)
        return y if rnn.proj is None else rnn.proj(y)
    ys, _ = rnn(x, timespans, mask, key=key)
    if mask is None:
        return jnp.mean(ys, axis=0)
    count = jnp.maximum(jnp.sum(mask), 1).astype(ys.dtype)
    return jnp.sum(ys, axis=0) / count  # masked outputs are zero


def target_stats(values) -> tuple[float, ...] | None:
    """A regression model's per-dimension target statistic as a static tuple of floats."""
    return None if values is None else tuple(float(v) for v in values)


def unstandardize(outputs: Array, mean, std) -> Array:
    r"""Head outputs in standardised target units → predictions in the targets' own units.

    With ``D`` targets of training mean ``m`` and standard deviation ``s`` (tuples of ``D``
    floats), outputs of width ``D`` become ``m + s · z``; outputs of width ``2 D`` (a mean and a
    raw variance ``v``, :func:`liquidjax.train.split_gaussian`: ``σ² = softplus(v) + ε``) become
    the mean ``m + s · μ`` and the raw variance ``v'`` with ``softplus(v') + ε = s² (softplus(v)
    + ε)``, so the variance is scaled by ``s²``. ``mean``/``std`` ``None`` leave `outputs` as
    they are.
    """
    if mean is None and std is None:
        return outputs
    d = outputs.shape[-1]
    k = len(mean if mean is not None else std)
    m = jnp.zeros(k, outputs.dtype) if mean is None else jnp.asarray(mean, outputs.dtype)
    s = jnp.ones(k, outputs.dtype) if std is None else jnp.asarray(std, outputs.dtype)
    if d == k:
        return m + s * outputs
    mu, v = outputs[..., :k], outputs[..., k:]
    # VARIANCE_FLOOR: the floor split_gaussian adds
    var = (s * s) * (jax.nn.softplus(v) + VARIANCE_FLOOR) - VARIANCE_FLOOR
    var = jnp.maximum(var, jnp.finfo(outputs.dtype).tiny)
    raw = var + jnp.log(-jnp.expm1(-var))  # softplus⁻¹, stable for large and small var
    return jnp.concatenate([m + s * mu, raw], axis=-1)


class SequenceClassifier(AbstractClassifier):
    r"""Liquid layers over a ``(L, C)`` sequence, then a linear readout to class logits.

    $$h^{(1)}_{1:L} = \mathrm{RNN}_1(x_{1:L}),\ \dots,\
      h^{(n)}_{1:L} = \mathrm{RNN}_n(h^{(n-1)}_{1:L}),
      \qquad \mathrm{logits} = W\,\mathrm{pool}(h^{(n)}) + b$$

    with ``pool`` the output at the last (valid) step (``readout="last"``) or the mean over the
    valid steps (``readout="mean"``). Every layer sees the same timespans and mask.

    With ``per_step=True`` (Keras ``return_sequences``) the head reads every step instead:
    ``outputs_t = W h^{(n)}_t + b``, shape ``(L, num_classes)`` (zero on masked steps), for
    per-step labels or real targets. The head is linear, so the same model serves
    classification (logits) and regression (predictions; see
    :func:`liquidjax.train.target_terms`).

    **Arguments:**
    - `layers`: the liquid layers, in order (each ``input_size`` equals the previous
      ``output_size``).
    - `head`: ``eqx.nn.Linear`` from the last layer's output size to the classes.
    - `readout`: ``"last"`` or ``"mean"``.
    - `dropout`: dropout rate on the pooled features (training only).
    - `per_step`: one output per step (the last layer must return sequences).
    - `target_mean`, `target_std`: regression: the training targets' mean and standard
      deviation per dimension (tuples of floats, constants — not trained). The head then
      predicts standardised targets and the model returns them in the targets' units
      (:func:`unstandardize`): the loss and the metrics of the trainer are in those units, and
      the network starts at the training mean with unit-variance outputs. ``None``: no scaling.

    **Returns** (of ``__call__``): outputs of shape ``(num_classes,)``, or ``(L, num_classes)``
    with `per_step`.

    **Example:**
    ```python
    model = build_model(ModelConfig(input_size=3, num_classes=4, units=8), key=jax.random.key(0))
    logits = jax.vmap(model)(xs)                       # xs: (batch, L, 3) -> (batch, 4)
    ```
    """

    layers: tuple[LiquidRNN, ...]
    head: eqx.nn.Linear
    readout: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    per_step: bool = eqx.field(static=True)
    target_mean: tuple[float, ...] | None = eqx.field(static=True)
    target_std: tuple[float, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        layers: tuple[LiquidRNN, ...] | list[LiquidRNN],
        head: eqx.nn.Linear,
        *,
        readout: str = "last",
        dropout: float = 0.0,
        per_step: bool = False,
        target_mean=None,
        target_std=None,
    ):
        self.layers = tuple(layers)
        self.target_mean = target_stats(target_mean)
        self.target_std = target_stats(target_std)
        self.head = head
        self.readout = readout
        self.dropout = float(dropout)
        self.per_step = bool(per_step)
        self.input_size = self.layers[0].cell.input_size if self.layers else 0
        self.num_classes = int(head.out_features)  # type: ignore[arg-type]

    def __check_init__(self):
        check_choice("readout", self.readout, READOUTS)
        if not self.layers:
            raise ValueError("SequenceClassifier needs at least one liquid layer")
        for i, (a, b) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            if a.output_size != b.cell.input_size:
                raise ValueError(
                    f"layer {i} outputs {a.output_size} features but layer {i + 1} expects "
                    f"{b.cell.input_size}"
                )
            if not a.return_sequences:
                raise ValueError(f"layer {i} must return sequences to feed layer {i + 1}")
        if self.readout == "mean" and not self.layers[-1].return_sequences:
            raise ValueError("readout='mean' needs a last layer with return_sequences=True")
        if self.per_step and not self.layers[-1].return_sequences:
            raise ValueError("per_step=True needs a last layer with return_sequences=True")
        if self.head.in_features != self.layers[-1].output_size:
            raise ValueError(
                f"head expects {self.head.in_features} features but the last layer outputs "
                f"{self.layers[-1].output_size}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        for name in ("target_mean", "target_std"):
            stat = getattr(self, name)
            if stat is not None and self.num_classes not in (len(stat), 2 * len(stat)):
                raise ValueError(f"{name} has {len(stat)} values; the head has "
                                 f"{self.num_classes} outputs (D or 2D for D targets)")
        if self.target_std is not None and not all(v > 0 for v in self.target_std):
            raise ValueError(f"target_std must be positive, got {self.target_std}")

    # ------------------------------------------------------------------ streaming (export)
    def stream_spec(self) -> StreamSpec:
        """Every layer must step one observation at a time (``interpolation="hold"``)."""
        for i, layer in enumerate(self.layers):
            try:
                layer.stream_spec()
            except ValueError as e:
                raise ValueError(f"SequenceClassifier layer {i}: {e}") from None
        return StreamSpec(self.input_size, self.num_classes,
                          tuple(layer.cell for layer in self.layers))

    def stream_init(self):
        """Every layer's cell state, and the running mean's sums for ``readout="mean"``."""
        states = tuple(layer.cell.init_state() for layer in self.layers)
        dtype = jax.tree_util.tree_leaves(states)[0].dtype
        if self.readout == "mean" and not self.per_step:
            return states, (jnp.zeros((self.layers[-1].output_size,), dtype),
                            jnp.zeros((), dtype))
        return states, ()

    def stream_step(self, state, x, dt):
        """The layers stepped in turn, then the head on what the whole-sequence call reads at
        this step: the step's output (``per_step``), the last layer's output for its state
        (``"last"``) or the running mean of its outputs (``"mean"``); regression outputs in the
        targets' own units."""
        states, acc = state
        new_states, h = [], x
        for layer, s in zip(self.layers, states):
            h, s = layer.stream_step(s, h, dt)
            new_states.append(s)
        last = self.layers[-1]
        if self.per_step:
            feats = h
        elif self.readout == "last" and last.return_sequences:
            # The "last" readout: the last layer's output for its final state.
            y = last.cell.output(new_states[-1])
            feats = y if last.proj is None else last.proj(y)
        elif self.readout == "last":
            feats = h
        else:
            total, count = acc
            total, count = total + h, count + 1
            feats, acc = total / count, (total, count)
        out = unstandardize(self.head(feats), self.target_mean, self.target_std)
        return out, (tuple(new_states), acc)

    def __call__(
        self,
        x: Float[Array, "time input"],
        timespans: Float[Array, " time"] | None = None,
        mask: Bool[Array, " time"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"] | Float[Array, "time classes"]:
        """Outputs (logits or predictions) of one sequence ``x`` of shape ``(L, input_size)``.

        **Arguments:** `timespans` ``(L,)`` elapsed times (default 1.0), `mask` boolean ``(L,)``
        (``True`` on valid steps), `key` for dropout (``None``: inference).
        """
        keys = [None] * (len(self.layers) + 1) if key is None else list(
            jax.random.split(key, len(self.layers) + 1)
        )
        h = x
        if self.per_step:
            for layer, k in zip(self.layers, keys):
                h, _ = layer(h, timespans, mask, key=k)
            ys = jax.vmap(self.head)(_dropout(h, self.dropout, keys[-1]))
            ys = unstandardize(ys, self.target_mean, self.target_std)
            return ys if mask is None else jnp.where(mask[:, None], ys, 0)
        for layer, k in zip(self.layers[:-1], keys):
            h, _ = layer(h, timespans, mask, key=k)
        feats = _pool(self.layers[-1], h, timespans, mask, self.readout, keys[-2])
        out = self.head(_dropout(feats, self.dropout, keys[-1]))
        return unstandardize(out, self.target_mean, self.target_std)
