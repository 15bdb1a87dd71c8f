"""Exact integer bits of WRAP-mode activation quantizers from data.

Calibration is all or nothing: the data are checked first, every range is observed, and the ranges are written
only once all of them are known and the calibrated model is exact in float32 (:mod:`hgq.exactness`). On any error
the quantizers keep the state they had before.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.ebops import ebops, h_layers
from hgq.exactness import check_float32_exact
from hgq.quantizer import ActivationQuantizer

__all__ = ['calibrate', 'CalibrationError', 'wrap_quantizers']

# While observing, ranges are opened to +-2**OPEN_RANGE_BITS so that no value wraps; data must stay inside.
OPEN_RANGE_BITS = 20


class CalibrationError(ValueError):
    """Calibration data or a model that cannot be calibrated; the model was left unchanged."""


def wrap_quantizers(model: keras.Model) -> list[ActivationQuantizer]:
    """The WRAP-mode input quantizers of every H-layer (those :func:`calibrate` sets), each once."""
    found: dict[int, ActivationQuantizer] = {}
    for layer in h_layers(model):
        found.update((id(q), q) for q in layer.activation_quantizers if q.tracks_range)
    return list(found.values())


def _as_inputs(model: keras.Model, data: Any) -> list[np.ndarray]:
    """``data`` as a list of float32 arrays (one per model input), checked before any work."""
    arrays = list(data) if isinstance(data, list | tuple) else [data]
    try:
        shapes = [tuple(x.shape[1:]) for x in model.inputs]
    except (AttributeError, TypeError, ValueError):  # subclassed models have no symbolic inputs
        shapes = None
    if shapes is not None and len(arrays) != len(shapes):
        raise CalibrationError(
            f'model {model.name!r} has {len(shapes)} inputs; the calibration data hold {len(arrays)} arrays'
        )
    checked = []
    for n, array in enumerate(arrays):
        where = f'calibration data{f" [{n}]" if len(arrays) > 1 else ""}'
        try:
            array = np.asarray(array, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise CalibrationError(f'{where}: expected a numeric array, got {type(array).__name__} ({err})') from None
        if array.ndim == 0 or len(array) == 0:
            raise CalibrationError(f'{where}: expected a non-empty array of samples, got shape {array.shape}')
        if shapes is not None and not _fits(array.shape[1:], shapes[n]):
            raise CalibrationError(
                f'{where}: expected samples of shape {shapes[n]} (model {model.name!r}), got {array.shape[1:]}'
            )
        if not np.all(np.isfinite(array)):
            raise CalibrationError(f'{where}: holds {int(np.sum(~np.isfinite(array)))} NaN or infinite values')
        checked.append(array)
    if len({len(a) for a in checked}) > 1:
        sizes = [len(a) for a in checked]
        raise CalibrationError(f'calibration data: the arrays hold different numbers of samples {sizes}')
    return checked


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    """``shape`` matches ``expected``, whose ``None`` dimensions take any size."""
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected, strict=True))


def _batches(arrays: list[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    for start in range(0, len(arrays[0]), batch_size):
        yield [a[start : start + batch_size] for a in arrays]


class _RangeObserver:
    """Accumulates, in variables, the exact minimum and maximum of every quantizer input per bitwidth element.

    Written with ``keras.ops`` on variables, so that the observation also runs inside a compiled function.
    """

    def __init__(self, quantizers: Sequence[ActivationQuantizer]) -> None:
        def variable(shape: tuple[int, ...], value: float) -> keras.Variable:
            return keras.Variable(np.full(shape, value, dtype='float32'), trainable=False)

        shapes = {id(q): tuple(q.vmin.shape) for q in quantizers}
        self.low = {key: variable(shape, np.inf) for key, shape in shapes.items()}
        self.high = {key: variable(shape, -np.inf) for key, shape in shapes.items()}
        # Per quantizer: how many values were seen, and how many were non-finite or beyond the open range.
        self.seen = {key: variable((), 0.0) for key in shapes}
        self.bad = {key: variable((), 0.0) for key in shapes}

    def reset(self) -> None:
        """Forget every observation (the state after construction)."""
        for key in self.low:
            self.low[key].assign(ops.full(self.low[key].shape, np.inf, dtype='float32'))
            self.high[key].assign(ops.full(self.high[key].shape, -np.inf, dtype='float32'))
            self.seen[key].assign(0.0)
            self.bad[key].assign(0.0)

    def __call__(self, quantizer: ActivationQuantizer, x: Any) -> None:
        key = id(quantizer)
        var_shape = tuple(self.low[key].shape)
        axes = (0, *(a + 1 for a, (v, s) in enumerate(zip(var_shape, quantizer.shape, strict=True)) if v == 1 != s))
        x = ops.cast(x, 'float32')
        finite = ops.isfinite(x)
        bad = ops.logical_or(ops.logical_not(finite), ops.abs(x) >= 2.0 ** (OPEN_RANGE_BITS - 1))
        low = ops.reshape(ops.min(ops.where(finite, x, np.inf), axis=axes), var_shape)
        high = ops.reshape(ops.max(ops.where(finite, x, -np.inf), axis=axes), var_shape)
        self.low[key].assign(ops.minimum(self.low[key], low))
        self.high[key].assign(ops.maximum(self.high[key], high))
        self.seen[key].assign_add(ops.cast(ops.size(x), 'float32'))
        self.bad[key].assign_add(ops.sum(ops.cast(bad, 'float32')))

    def ranges(self, quantizers: Sequence[ActivationQuantizer]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The observed ranges, after checking that every quantizer saw data and only values it can hold."""
        unseen = [q.name for q in quantizers if float(self.seen[id(q)].numpy()) == 0]
        if unseen:
            raise CalibrationError(f'quantizers {unseen} saw no data: the model does not call their layers')
        for quantizer in quantizers:
            if float(self.bad[id(quantizer)].numpy()) > 0:
                raise CalibrationError(
                    f'{quantizer.name}: calibration saw {int(self.bad[id(quantizer)].numpy())} values beyond '
                    f'+-2**{OPEN_RANGE_BITS - 1} or non-finite (non-finite weights after a diverged training, or '
                    'data far outside the training range)'
                )
        return {id(q): (self.low[id(q)].numpy(), self.high[id(q)].numpy()) for q in quantizers}


def _forward(model: keras.Model, inputs: list[np.ndarray]) -> Callable[[list[np.ndarray]], Any]:
    """``model(batch, training=False)``, compiled with TensorFlow when that is the backend (eager otherwise).

    One trace serves every batch size (the batch axis is left open), so the last, smaller batch does not trace the
    model again.
    """

    model_ref = weakref.ref(model)  # the pass is kept in _PASSES, keyed weakly by the model: no reference back

    def forward(batch: list[Any]) -> Any:
        return model_ref()(batch if len(batch) > 1 else batch[0], training=False)

    if keras.backend.backend() == 'tensorflow':
        import tensorflow as tf

        specs = [tf.TensorSpec((None, *array.shape[1:]), tf.float32) for array in inputs]
        return tf.function(forward, input_signature=[specs])
    return forward


# The observation pass of a model (observer and compiled forward), per quantizers and input shapes, kept while the
# model lives: calibrating a model again (each checkpoint that ``hgq run`` loads into one model, each budget step of
# ``hgq.allocate``) reuses its trace instead of tracing the model anew.
_PASSES: weakref.WeakKeyDictionary[keras.Model, dict[tuple, tuple[_RangeObserver, Callable]]]
_PASSES = weakref.WeakKeyDictionary()


def _observation_pass(
    model: keras.Model, quantizers: Sequence[ActivationQuantizer], inputs: list[np.ndarray]
) -> tuple[_RangeObserver, Callable[[list[np.ndarray]], Any]]:
    """The model's observer (reset) and compiled forward for these quantizers and input shapes."""
    key = (tuple(id(q) for q in quantizers), tuple(array.shape[1:] for array in inputs))
    passes = _PASSES.setdefault(model, {})
    if key not in passes:
        passes[key] = (_RangeObserver(quantizers), _forward(model, inputs))
    observer, forward = passes[key]
    observer.reset()
    return observer, forward


def _observe(
    model: keras.Model,
    quantizers: Sequence[ActivationQuantizer],
    inputs: list[np.ndarray],
    batch_size: int,
    verbose: int,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Run ``model`` over the data with open ranges, recording each quantizer's input range."""
    observer, forward = _observation_pass(model, quantizers, inputs)
    bound = 2.0**OPEN_RANGE_BITS
    progress = keras.utils.Progbar(len(inputs[0])) if verbose else None
    for quantizer in quantizers:
        quantizer.set_range(-bound, bound)
        quantizer.observer = observer
    try:
        for batch in _batches(inputs, batch_size):
            forward(batch)
            if progress is not None:
                progress.add(len(batch[0]))
    finally:
        for quantizer in quantizers:
            quantizer.observer = None
    return observer.ranges(quantizers)


def calibrate(model: keras.Model, data: Any, batch_size: int = 1024, verbose: int = 0) -> float:
    """Set the integer bits and sign of every WRAP-mode activation quantizer exactly from data.

    After calibration no value of ``data`` overflows anywhere in the model, and every activation uses the
    fewest integer bits that hold it. Run it before conversion to HLS and before reporting EBOPs.

    All or nothing: the data are checked first (a non-empty array, or one per model input, all finite), the
    ranges are observed (one pass over the data) with every quantizer opened to ``+-2**20``, and they are written
    only if every value stayed inside ``+-2**19`` and the calibrated model is exact in float32
    (:func:`hgq.exactness.float32_problems`). Otherwise the model is left as it was and an error names the problem.

    Parameters
    ----------
    model : keras.Model
        A built model of H-layers: functional, Sequential, nested or subclassed.
    data : array or list of arrays
        Representative inputs (typically the training set).
    batch_size : int
        Batch size of the observation pass.
    verbose : int
        1 shows a progress bar.

    Returns
    -------
    float
        The model's exact EBOPs after calibration.

    Raises
    ------
    CalibrationError
        Unbuilt model, empty or non-finite data, values beyond ``+-2**19``.
    hgq.exactness.InexactError
        The calibrated formats would be inexact in float32 (the calibration is undone).

    Examples
    --------
    >>> import numpy as np, keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> hgq.calibrate(model, np.random.rand(100, 4).astype('float32')) > 0
    True
    """
    if not model.built:
        raise CalibrationError(f'model {model.name!r} is not built; call it on data or give it an Input first')
    if int(batch_size) < 1:
        raise CalibrationError(f'batch_size must be a positive integer, got {batch_size}')
    inputs = _as_inputs(model, data)
    quantizers = wrap_quantizers(model)
    if not quantizers:
        return ebops(model)
    saved = [(v, ops.convert_to_numpy(v)) for q in quantizers for v in q.non_trainable_weights]
    try:
        ranges = _observe(model, quantizers, inputs, int(batch_size), verbose)
        for quantizer in quantizers:
            quantizer.set_range(*ranges[id(quantizer)])
            quantizer.calibrated.assign(1.0)
        check_float32_exact(model)
    except BaseException:
        for variable, value in saved:
            variable.assign(value)
        raise
    return ebops(model)
