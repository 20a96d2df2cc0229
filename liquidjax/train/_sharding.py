"""Data parallelism with ``jax.sharding``: the batch is split over a 1-D device mesh, parameters
and optimiser state are replicated. The same code runs on one device, on all local devices, and
across hosts after ``jax.distributed.initialize()`` (each process feeds its slice of the batch)."""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from .._native import DATA_AXIS  # the axis the compiled kernels split their batch over


@dataclasses.dataclass(frozen=True, eq=False)
class DataParallel:
    """A 1-D mesh over devices and the two shardings the trainer needs.

    **Arguments:**
    - `mesh`: a ``jax.sharding.Mesh`` with one axis named ``"data"``.

    Use :meth:`create` for the mesh over every device (all hosts).

    **Example:**
    ```python
    dp = DataParallel.create()
    model = dp.replicate(model)
    batch = dp.shard_batch({"x": x_np, "y": y_np})   # this process's rows of the global batch
    ```
    """

    mesh: jax.sharding.Mesh

    @classmethod
    def create(cls, devices: list[Any] | None = None) -> DataParallel:
        devices = jax.devices() if devices is None else list(devices)
        mesh = jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)
        return cls(mesh)

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

    def context(self) -> Any:
        """``jax.set_mesh(self.mesh)``: the jitted steps traced inside run the compiled CPU
        kernels per device on its rows of the batch (outside, XLA runs each kernel on the whole
        batch on every device).

        ```python
        with dp.context():
            state, loss = train_step(state, dp.shard_batch(batch, batch_size))
        ```
        """
        return jax.set_mesh(self.mesh)

    def check_batch_size(self, batch_size: int, what: str = "batch_size") -> None:
        """Raise ``ValueError`` unless `batch_size` splits evenly over the devices and hosts."""
        n, p = self.num_devices, jax.process_count()
        if batch_size % n or batch_size % p:
            raise ValueError(
                f"{what}={batch_size} is not divisible by the number of devices ({n}"
                + (f" over {p} processes" if p > 1 else "")
                + f"); use a multiple of {n}, e.g. {max(n, batch_size - batch_size % n)}"
            )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global batch this process feeds."""
        p, i = jax.process_count(), jax.process_index()
        per = batch_size // p
        return slice(i * per, (i + 1) * per)

    def replicate(self, tree: Any) -> Any:
        """Place every array of `tree` on all devices (replicated)."""
        return eqx.filter_shard(tree, self.replicated)

    def shard_batch(self, local: dict[str, np.ndarray], global_rows: int) -> dict[str, jax.Array]:
        """Assemble global arrays sharded over the batch axis from this process's rows."""
        out = {}
        for name, arr in local.items():
            shape = (global_rows,) + tuple(arr.shape[1:])
            out[name] = jax.make_array_from_process_local_data(self.batch_sharding, arr, shape)
        return out
