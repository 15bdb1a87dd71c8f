"""Exact integer bits of WRAP-mode activation quantizers from data."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from hgq.ebops import ebops, h_layers
from hgq.quantizer import ActivationQuantizer

__all__ = ['calibrate']

# While observing, ranges are opened to +-2**OPEN_RANGE_BITS so that no value wraps; data must stay inside.
OPEN_RANGE_BITS = 20


def _wrap_quantizer_inputs(model: keras.Model) -> list[tuple[ActivationQuantizer, Any]]:
    pairs = []
    for layer in h_layers(model):
        inputs = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
        for quantizer, tensor in zip(layer.activation_quantizers, inputs, strict=True):
            if quantizer.tracks_range:
                pairs.append((quantizer, tensor))
    return pairs


def _reduce(values: np.ndarray, var_shape: tuple[int, ...], fn) -> np.ndarray:
    axes = (0, *(a + 1 for a, v in enumerate(var_shape) if v == 1 and values.shape[a + 1] != 1))
    return fn(values, axis=axes).reshape(var_shape)


def calibrate(model: keras.Model, data: Any, batch_size: int = 1024, verbose: int = 0) -> float:
    """Set the integer bits and sign of every WRAP-mode activation quantizer exactly from data.

    After calibration no value of ``data`` overflows anywhere in the model, and every activation uses the
    fewest integer bits that hold it. Run it before conversion to HLS and before reporting EBOPs.

    Parameters
    ----------
    model : keras.Model
        A built functional or Sequential model of H-layers.
    data : array or list of arrays
        Representative inputs (typically the training set).
    batch_size : int
        Batch size of the observation pass.
    verbose : int
        Passed to ``predict``.

    Returns
    -------
    float
        The model's exact EBOPs after calibration.

    Examples
    --------
    >>> import numpy as np, keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> hgq.calibrate(model, np.random.rand(100, 4).astype('float32')) > 0
    True
    """
    pairs = _wrap_quantizer_inputs(model)
    if not pairs:
        return ebops(model)
    probe = keras.Model(model.inputs, [tensor for _, tensor in pairs])
    bound = 2.0**OPEN_RANGE_BITS
    for quantizer, _ in pairs:
        quantizer.set_range(-bound, bound)
    outputs = probe.predict(data, batch_size=batch_size, verbose=verbose)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for (quantizer, _), values in zip(pairs, outputs, strict=True):
        if not np.all(np.isfinite(values)) or np.max(np.abs(values)) >= bound / 2:
            raise ValueError(
                f'{quantizer.name}: calibration saw values beyond +-2**{OPEN_RANGE_BITS - 1} or non-finite values; '
                'check the data and the model'
            )
        var_shape = tuple(quantizer.vmax.shape)
        quantizer.set_range(_reduce(values, var_shape, np.min), _reduce(values, var_shape, np.max))
        quantizer.calibrated.assign(1.0)
    return ebops(model)
