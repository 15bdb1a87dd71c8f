"""A compiled graph computes what the layers compute op by op (``model.predict`` against ``model(x)``).

TensorFlow's graph optimizer drops ``stop_gradient`` from inference graphs and may regroup sums; the quantizers'
straight-through estimators must stay exact under any such regrouping (:func:`hgq.quantizer.straight_through`).

Every H-layer kind sits in one small network, every layer's output is compared (``np.array_equal``) between the eager
call, ``model.predict`` (a TensorFlow graph), ``model.predict`` after ``compile(jit_compile=True)`` (XLA) and, for the
training forward pass, ``tf.function`` against eager. The bitwidths and weights hold non-integer values, as training
leaves them, and the inputs overflow the ranges (wrap-around or saturation) and hit rounding ties.
"""

import keras
import numpy as np
import pytest

import hgq
from hgq.fixed_point import quantize
from hgq.layers import (
    HActivation,
    HAdd,
    HAveragePooling1D,
    HAveragePooling2D,
    HBatchNormalization,
    HConcatenate,
    HConv1D,
    HConv1DBatchNorm,
    HConv2D,
    HConv2DBatchNorm,
    HDense,
    HDenseBatchNorm,
    HGlobalAveragePooling1D,
    HGlobalAveragePooling2D,
    HLayer,
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
)
from hgq.quantizer import ActivationQuantizer, WeightQuantizer

SAMPLES = 256


def _learned_sat_model(rng: np.random.Generator, n: int) -> keras.Model:
    """An input quantizer with learned, non-integer i and f (as training leaves them), then a dense layer."""
    quantizer = ActivationQuantizer(overflow_mode='SAT', round_mode='RND_CONV', signed=False)
    model = keras.Sequential([keras.Input((n,)), HQuantize(input_quantizer=quantizer), HDense(4)])
    quantizer.i.assign(rng.uniform(-1.5, 1.5, quantizer.i.shape).astype('float32'))
    quantizer.f.assign(rng.uniform(0.6, 5.4, quantizer.f.shape).astype('float32'))
    return model


@pytest.mark.parametrize('seed', [0])
def test_predict_equals_the_eager_call_for_learned_saturating_bits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _learned_sat_model(rng, 256)
    x = rng.uniform(-3.0, 6.0, (512, 256)).astype('float32')  # a third beyond every saturation bound
    quantizer = model.layers[0].input_quantizer
    i = np.floor(keras.ops.convert_to_numpy(quantizer.i) + 0.5)
    f = np.floor(keras.ops.convert_to_numpy(quantizer.f) + 0.5)
    expected = quantize(x, 0, i, f, 'RND_CONV', 'SAT')
    front = keras.Model(model.inputs[0], model.layers[0].output)
    graph = front.predict(x, verbose=0, batch_size=512)
    eager = keras.ops.convert_to_numpy(front(x))
    assert np.array_equal(eager, expected)
    assert np.array_equal(graph, expected)
    assert np.array_equal(model.predict(x, verbose=0), keras.ops.convert_to_numpy(model(x)))


FORMATS = [
    (overflow, rounding)
    for rounding in ('RND', 'RND_CONV', 'TRN', 'TRN_ZERO', 'RND_ZERO', 'RND_INF', 'RND_MIN_INF')
    for overflow in ('WRAP', 'SAT', 'SAT_SYM')
]


def _every_layer_kind(shift: int) -> keras.Model:
    """A network holding every H-layer kind; its outputs are the outputs of all its H-layers, in order.

    The input quantizers take the overflow and rounding modes of :data:`FORMATS` in turn, from ``shift`` on.
    """
    formats = iter(FORMATS[shift:] + FORMATS[:shift])

    def q(**kwargs) -> dict:
        overflow_mode, round_mode = next(formats)
        quantizer = ActivationQuantizer(overflow_mode=overflow_mode, round_mode=round_mode, **kwargs)
        return {'input_quantizer': quantizer}

    # Table layers saturate their inputs (WRAP there is a different table, not a different path).
    overflow_mode, round_mode = next(formats)
    table = {
        'input_quantizer': {
            'overflow_mode': 'SAT_SYM' if overflow_mode == 'WRAP' else overflow_mode,
            'round_mode': round_mode,
        }
    }
    seq, other, image = keras.Input((8, 3)), keras.Input((8, 3)), keras.Input((6, 6, 2))
    a = HQuantize(**q())(seq)
    b = HConv1D(4, 3, padding='same', **q(granularity='channel'))(other)
    c = HConv1DBatchNorm(4, 3, padding='same', **q())(a)
    merged = HConcatenate(**q())([HAdd(**q())([b, c]), HSubtract(**q())([b, c]), HMultiply(**q())([b, c])])
    pooled = HAveragePooling1D(2, **q())(HMaxPooling1D(2, **q())(merged))
    seq_features = HGlobalAveragePooling1D(**q(granularity='tensor'))(pooled)
    d = HConv2DBatchNorm(4, 2, **q())(HConv2D(3, 3, **q())(image))
    image_features = HGlobalAveragePooling2D(**q())(HAveragePooling2D(1, **q())(HMaxPooling2D(2, **q())(d)))
    h = HBatchNormalization(**q())(HConcatenate(**q())([seq_features, image_features]))
    h = HDenseBatchNorm(6, **q())(HDense(8, **q())(h))
    h = HActivation('tanh', **table)(HActivation('relu', **q())(h))
    out = HSoftmax()(h)
    model = keras.Model([seq, other, image], out)
    return keras.Model(model.inputs, [layer.output for layer in model.layers if isinstance(layer, HLayer)])


def _learned_state(model: keras.Model, rng: np.random.Generator) -> None:
    """Non-integer bitwidths and weights, as training leaves them; WRAP ranges narrower than the inputs."""
    for layer in model.layers:
        if not isinstance(layer, HLayer):
            continue
        # The softmax's inner formats keep their defaults: random ones can make its sum 0 (and its output NaN).
        quantizers = [layer.input_quantizer] if isinstance(layer, HSoftmax) else layer.quantizers
        for quantizer in quantizers:
            quantizer.f.assign(rng.uniform(0.6, 5.4, quantizer.f.shape).astype('float32'))
            if isinstance(quantizer, WeightQuantizer):
                continue
            if quantizer.tracks_range:
                low = rng.uniform(-2.0, 0.3, quantizer.vmin.shape).astype('float32')
                quantizer.set_range(low, low + rng.uniform(0.1, 3.0, low.shape).astype('float32'))
                quantizer.train_peak.assign(keras.ops.maximum(-quantizer.vmin, quantizer.vmax))
            else:
                quantizer.i.assign(rng.uniform(-1.5, 1.5, quantizer.i.shape).astype('float32'))
        for weight in layer.weights:
            if weight.name in ('kernel', 'bias', 'gamma', 'offset'):
                weight.assign(rng.uniform(-1.5, 1.5, weight.shape).astype('float32'))
            elif weight.name in ('moving_mean', 'moving_variance'):
                weight.assign(rng.uniform(0.25, 2.0, weight.shape).astype('float32'))


def _inputs(model: keras.Model, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Values far beyond the learned ranges; half of them on a 2**-6 grid, so that rounding meets ties."""
    xs = [rng.uniform(-6.0, 6.0, (n, *tensor.shape[1:])).astype('float32') for tensor in model.inputs]
    for x in xs:
        x[: n // 2] = np.round(x[: n // 2] * 64.0) / 64.0
    return xs


def _numpy(outputs) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs]


def _mismatches(got: list[np.ndarray], expected: list[np.ndarray], model: keras.Model) -> list[str]:
    names = [layer.name for layer in model.layers if isinstance(layer, HLayer)]
    return [
        f'{name}: {int(np.sum(g != e))} of {e.size} differ, e.g. {g[g != e][0]!r} for {e[g != e][0]!r}'
        for name, g, e in zip(names, got, expected, strict=True)
        if not np.array_equal(g, e)
    ]


@pytest.mark.parametrize(('shift', 'calibrated', 'jit_compile'), [(0, False, True), (10, True, False)])
def test_every_layer_kind_predicts_what_it_computes_op_by_op(shift: int, calibrated: bool, jit_compile: bool) -> None:
    """One network through XLA (compiling it costs seconds), the other through the plain TensorFlow graph."""
    rng = np.random.default_rng(shift)
    model = _every_layer_kind(shift)
    _learned_state(model, rng)
    x = _inputs(model, rng, SAMPLES)
    if calibrated:
        hgq.calibrate(model, [v[: SAMPLES // 2] / 2.0 for v in x])  # half the data then overflows the ranges
    eager = _numpy(model(x))
    h_layers = [layer for layer in model.layers if isinstance(layer, HLayer)]
    front = next(n for n, layer in enumerate(h_layers) if isinstance(layer, HQuantize))  # the numpy reference too
    quantizer = h_layers[front].input_quantizer
    expected = quantize(x[0], *quantizer.kif(), quantizer.round_mode, quantizer.overflow_mode)
    assert np.array_equal(eager[front], expected)
    model.compile(jit_compile=jit_compile)
    graph = _numpy(model.predict(x, verbose=0, batch_size=SAMPLES))
    assert not _mismatches(graph, eager, model)


@pytest.mark.skipif(keras.backend.backend() != 'tensorflow', reason='tf.function')
def test_the_training_forward_pass_is_the_same_in_a_graph() -> None:
    """``model(x, training=True)`` in ``tf.function`` equals the eager call: outputs and the state it updates."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    model = _every_layer_kind(5)
    _learned_state(model, rng)
    x = _inputs(model, rng, SAMPLES)
    before = [keras.ops.convert_to_numpy(v) for v in model.variables]
    eager = _numpy(model(x, training=True))
    eager_state = [keras.ops.convert_to_numpy(v) for v in model.variables]
    for variable, value in zip(model.variables, before, strict=True):
        variable.assign(value)
    graph = _numpy(tf.function(lambda inputs: model(inputs, training=True))(x))
    assert not _mismatches(graph, eager, model)
    changed = [v.path for v, e in zip(model.variables, eager_state, strict=True) if not np.array_equal(v.numpy(), e)]
    assert not changed
    assert any(not np.array_equal(b, e) for b, e in zip(before, eager_state, strict=True))  # ranges did move


def test_a_zero_width_format_gives_zero_even_for_an_infinite_value() -> None:
    """Training can take a softmax's exp and reciprocal formats to zero width: the output is then 0, not NaN.

    The reciprocal table's entry for a sum of 0 is the quantized ``1 / 0``; ``0 * inf`` made it NaN, and with it
    every output of a row whose exponentials all round to 0.
    """
    x = np.array([np.inf, -np.inf, 1.0, -3.0], dtype='float32')
    with np.errstate(invalid='ignore'):  # inf - inf in the rounding of the unused codes
        for overflow_mode in ('WRAP', 'SAT', 'SAT_SYM'):
            assert np.array_equal(quantize(x, 0, -1, 1, 'RND', overflow_mode), np.zeros(4))
    zero_width = {'i_init': -1.0, 'f_init': 1.0}
    model = keras.Sequential([keras.Input((6,)), HSoftmax(exp_quantizer=zero_width, inv_quantizer=zero_width)])
    x = np.random.default_rng(0).uniform(-8.0, 8.0, (SAMPLES, 6)).astype('float32')
    assert np.array_equal(keras.ops.convert_to_numpy(model(x)), np.zeros_like(x))
