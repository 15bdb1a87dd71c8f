"""Which trainable variable receives which gradient: a learned bitwidth learns through its step variable.

See :class:`hgq.quantizer.ScaledStep`: the forward pass reads a bitwidth but routes its gradient to a companion
step variable (the bitwidth's own gradient is zero), so gradient checks ask the step variable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hgq.quantizer import ScaledStep


def step_variable(quantizer: Any, bitwidth: Any) -> Any:
    """The variable whose gradient is ``bitwidth``'s (its step variable), found through the step's constraint."""
    for variable in quantizer.trainable_weights:
        if isinstance(variable.constraint, ScaledStep) and variable.constraint.variable is bitwidth:
            return variable
    raise AssertionError(f'{bitwidth.path} has no step variable')


def check_every_variable_learns(variables: list[Any], grads: list[Any]) -> None:
    """Every trainable variable gets a finite gradient: nonzero, or exactly zero for a bitwidth with a step."""
    routed = {id(v.constraint.variable) for v in variables if isinstance(v.constraint, ScaledStep)}
    for variable, grad in zip(variables, grads, strict=True):
        assert grad is not None, f'{variable.path}: no gradient'
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)), f'{variable.path}: non-finite gradient'
        if id(variable) in routed:
            assert np.all(grad == 0), f'{variable.path}: learns through its step variable, its own gradient is 0'
        else:
            assert np.any(grad != 0), f'{variable.path}: zero gradient'
