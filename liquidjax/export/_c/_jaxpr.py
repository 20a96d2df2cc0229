"""Small facts about jaxprs shared by the exporters (:mod:`liquidjax.export`, :mod:`._cgen`)."""

from __future__ import annotations

from typing import Any

# Primitives that wrap a sub-jaxpr which, for inference, is just called (custom derivatives and
# rematerialisation do not matter in an exported forward pass): name -> the parameter holding it.
CALL_PARAMS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
               "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
               "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
               "remat": "jaxpr", "checkpoint": "jaxpr", "custom_vmap_call": "call",
               "custom_lin": None}


def bind(eqn: Any, invals: list) -> list:
    """Evaluate one equation on ``invals``; its outputs as a list."""
    with eqn.ctx.manager:
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return outs if eqn.primitive.multiple_results else [outs]
