"""Properties every H-layer must have: save/load round trip, gradients, float reference, EBOPs and clear errors.

Each case builds one layer fed directly by ``keras.Input`` (the layer quantizes its own inputs) and, for the
float reference, the plain Keras layer(s) computing the same function with the same weights.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf
from learning import check_every_variable_learns

import hgq
from hgq.layers import (
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
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSubtract,
)

KERNEL_QUANTIZERS = ('kernel_quantizer', 'bias_quantizer')
BN_QUANTIZERS = ('scale_quantizer', 'offset_quantizer')


class Case(NamedTuple):
    make: Callable[..., keras.layers.Layer]  # H-layer from quantizer keyword arguments
    input_shapes: list[tuple[int, ...]]
    reference: Callable[[Any], keras.layers.Layer]  # float Keras layer with the weights of the built H-layer
    weight_quantizers: tuple[str, ...] = ()  # names of the weight quantizer arguments


def _kernel_weights(layer):
    return [layer.kernel.numpy(), *([layer.bias.numpy()] if layer.use_bias else [])]


def _bn_weights(layer):
    return [layer.gamma.numpy(), layer.offset.numpy(), layer.moving_mean.numpy(), layer.moving_variance.numpy()]


def _with_weights(layer, input_shape, weights):
    layer.build(input_shape)
    layer.set_weights(weights)
    return layer


def _fused_reference(linear, activation):
    def reference(h):
        shape = (None, *h.input_quantizer.shape)
        kernel = _with_weights(linear, shape, [h.kernel.numpy()])
        bn = _with_weights(keras.layers.BatchNormalization(), kernel.compute_output_shape(shape), _bn_weights(h))
        return keras.Sequential([kernel, bn, keras.layers.Activation(activation)])

    return reference


def _kernel_reference(make_float):
    return lambda h: _with_weights(make_float(), (None, *h.input_quantizer.shape), _kernel_weights(h))


def _plain(make_float):
    return lambda h: make_float()


CASES = {
    'dense': Case(
        lambda **q: HDense(5, activation='relu', **q),
        [(6,)],
        _kernel_reference(lambda: keras.layers.Dense(5, activation='relu')),
        KERNEL_QUANTIZERS,
    ),
    'dense_3d_input': Case(
        lambda **q: HDense(3, **q),
        [(4, 6)],
        _kernel_reference(lambda: keras.layers.Dense(3)),
        KERNEL_QUANTIZERS,
    ),
    'conv1d': Case(
        lambda **q: HConv1D(3, 3, strides=2, padding='same', activation='relu', **q),
        [(9, 2)],
        _kernel_reference(lambda: keras.layers.Conv1D(3, 3, strides=2, padding='same', activation='relu')),
        KERNEL_QUANTIZERS,
    ),
    'conv2d': Case(
        lambda **q: HConv2D(3, (3, 2), strides=(1, 2), parallelization_factor=-1, **q),
        [(6, 7, 2)],
        _kernel_reference(lambda: keras.layers.Conv2D(3, (3, 2), strides=(1, 2))),
        KERNEL_QUANTIZERS,
    ),
    'conv2d_channel_granularity': Case(
        lambda **q: HConv2D(
            4,
            3,
            padding='same',
            use_bias=False,
            parallelization_factor=4,
            **{
                'input_quantizer': {'granularity': 'channel', **q.get('input_quantizer', {})},
                'kernel_quantizer': {'granularity': 'channel', **q.get('kernel_quantizer', {})},
            },
        ),
        [(4, 4, 3)],
        _kernel_reference(lambda: keras.layers.Conv2D(4, 3, padding='same', use_bias=False)),
        ('kernel_quantizer',),
    ),
    'dense_batchnorm': Case(
        lambda **q: HDenseBatchNorm(4, activation='relu', **q),
        [(6,)],
        _fused_reference(keras.layers.Dense(4, use_bias=False), 'relu'),
        KERNEL_QUANTIZERS,
    ),
    'conv1d_batchnorm': Case(
        lambda **q: HConv1DBatchNorm(3, 3, **q),
        [(8, 2)],
        _fused_reference(keras.layers.Conv1D(3, 3, use_bias=False), 'linear'),
        KERNEL_QUANTIZERS,
    ),
    'conv2d_batchnorm': Case(
        lambda **q: HConv2DBatchNorm(3, 2, strides=2, activation='relu', **q),
        [(6, 6, 2)],
        _fused_reference(keras.layers.Conv2D(3, 2, strides=2, use_bias=False), 'relu'),
        KERNEL_QUANTIZERS,
    ),
    'batchnorm': Case(
        lambda **q: HBatchNormalization(**q),
        [(5, 3)],
        lambda h: _with_weights(keras.layers.BatchNormalization(), (None, 5, 3), _bn_weights(h)),
        BN_QUANTIZERS,
    ),
    'add': Case(lambda **q: HAdd(**q), [(2, 4), (2, 4)], _plain(keras.layers.Add)),
    'add_three': Case(lambda **q: HAdd(**q), [(4,), (4,), (4,)], _plain(keras.layers.Add)),
    'subtract': Case(lambda **q: HSubtract(**q), [(4,), (4,)], _plain(keras.layers.Subtract)),
    'multiply': Case(lambda **q: HMultiply(**q), [(3, 4), (3, 4)], _plain(keras.layers.Multiply)),
    'concatenate': Case(lambda **q: HConcatenate(**q), [(2, 4), (2, 3)], _plain(keras.layers.Concatenate)),
    'concatenate_axis1': Case(
        lambda **q: HConcatenate(axis=1, **q), [(2, 4), (3, 4)], _plain(lambda: keras.layers.Concatenate(axis=1))
    ),
    'max_pooling1d': Case(lambda **q: HMaxPooling1D(2, **q), [(8, 2)], _plain(lambda: keras.layers.MaxPooling1D(2))),
    'max_pooling2d_same': Case(
        lambda **q: HMaxPooling2D(3, strides=2, padding='same', **q),
        [(5, 5, 2)],
        _plain(lambda: keras.layers.MaxPooling2D(3, strides=2, padding='same')),
    ),
    'average_pooling1d': Case(
        lambda **q: HAveragePooling1D(4, strides=2, **q), [(8, 2)], _plain(lambda: keras.layers.AveragePooling1D(4, 2))
    ),
    'average_pooling2d': Case(
        lambda **q: HAveragePooling2D((2, 1), **q), [(4, 5, 2)], _plain(lambda: keras.layers.AveragePooling2D((2, 1)))
    ),
    'global_average_pooling1d': Case(
        lambda **q: HGlobalAveragePooling1D(**q), [(8, 3)], _plain(keras.layers.GlobalAveragePooling1D)
    ),
    'global_average_pooling2d': Case(
        lambda **q: HGlobalAveragePooling2D(keepdims=True, **q),
        [(4, 2, 3)],
        _plain(lambda: keras.layers.GlobalAveragePooling2D(keepdims=True)),
    ),
}

MULTIPLIER_CASES = [name for name, case in CASES.items() if case.weight_quantizers or name == 'multiply']


def _inputs(case: Case, n: int = 32, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, *s)) * scale).astype('float32') for s in case.input_shapes]


def _model(case: Case, beta: float = 1e-4, f_init: float | None = None, input_quantizer: dict | None = None, **kw):
    """The case's H-layer in a functional model; ``f_init`` sets the fractional bits of every quantizer."""
    quantizers = {}
    if f_init is not None:
        quantizers = {name: {'f_init': f_init} for name in case.weight_quantizers}
        quantizers['input_quantizer'] = {'f_init': f_init}
    if input_quantizer is not None:
        quantizers['input_quantizer'] = {**quantizers.get('input_quantizer', {}), **input_quantizer}
    layer = case.make(beta=beta, **quantizers, **kw)
    inputs = [keras.Input(s) for s in case.input_shapes]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    return keras.Model(inputs, layer(inputs)), layer


def _feed(x: list[np.ndarray]) -> Any:
    return x if len(x) > 1 else x[0]


@pytest.mark.parametrize('name', CASES)
def test_save_load_round_trip_gives_identical_outputs_and_bitwidths(name, tmp_path):
    case = CASES[name]
    model, _ = _model(case)
    x = _inputs(case)
    model.compile(keras.optimizers.Adam(0.01), 'mse')
    model.fit(_feed(x), np.ones((32, *model.output_shape[1:]), 'float32'), epochs=1, batch_size=16, verbose=0)
    path = tmp_path / f'{name}.keras'
    model.save(path)
    loaded = keras.models.load_model(path)
    assert np.array_equal(model(_feed(x)).numpy(), loaded(_feed(x)).numpy())
    assert [w.path for w in model.weights] == [w.path for w in loaded.weights]
    for w, w_loaded in zip(model.weights, loaded.weights, strict=True):
        assert np.array_equal(w.numpy(), w_loaded.numpy()), w.path
    layer, layer_loaded = model.layers[-1], loaded.layers[-1]
    assert type(layer_loaded) is type(layer)
    assert layer_loaded.get_config() == layer.get_config()
    for q, q_loaded in zip(layer.activation_quantizers, layer_loaded.activation_quantizers, strict=True):
        for a, b in zip(q.kif(), q_loaded.kif(), strict=True):
            assert np.array_equal(a, b), q.name
    assert layer_loaded.exact_ebops() == layer.exact_ebops()


@pytest.mark.parametrize('overflow_mode', ['WRAP', 'SAT'])
@pytest.mark.parametrize('name', CASES)
def test_every_trainable_variable_gets_a_nonzero_gradient(name, overflow_mode):
    case = CASES[name]
    # SAT with 1 integer bit: inputs of scale 3 saturate often, so the learned i gets gradient even without EBOPs.
    model, _ = _model(case, beta=1e-3, input_quantizer={'overflow_mode': overflow_mode, 'i_init': 1.0})
    x = _inputs(case, n=64, scale=3.0)
    for v in model.variables:  # a zero bias is exactly representable, so its bits would get no gradient
        if v.path.endswith('/bias'):
            v.assign(np.random.default_rng(2).normal(size=v.shape))
    readout = np.random.default_rng(1).normal(size=model.output_shape[1:]).astype('float32')
    with tf.GradientTape() as tape:
        y = model(_feed(x), training=True)
        loss = tf.reduce_sum(y * readout) / 64 + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    names = [v.path for v in model.trainable_variables]
    assert any(n.endswith('/f') for n in names) and (overflow_mode == 'WRAP' or any(n.endswith('/i') for n in names))
    check_every_variable_learns(model.trainable_variables, [None if g is None else g.numpy() for g in grads])


@pytest.mark.parametrize('name', CASES)
def test_matches_float_keras_layer_when_bits_are_large(name):
    case = CASES[name]
    model, layer = _model(case, f_init=20.0)
    x = _inputs(case, n=16)
    reference = case.reference(layer)
    expected = reference(_feed(x))
    # float32 rounding of the reference differs from ours; 20 fractional bits leave errors near 2**-20.
    np.testing.assert_allclose(model(_feed(x)).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    if isinstance(layer, HDenseBatchNorm | HConv1DBatchNorm | HConv2DBatchNorm | HBatchNormalization):
        bn = reference.layers[1] if isinstance(reference, keras.Sequential) else reference
        expected_training = reference(_feed(x), training=True)
        np.testing.assert_allclose(model(_feed(x), training=True).numpy(), expected_training, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.moving_mean.numpy(), bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), bn.moving_variance.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', MULTIPLIER_CASES)
def test_ebops_are_positive_and_grow_with_bits(name):
    case = CASES[name]
    model, layer = _model(case)
    for v in model.variables:  # batch-norm scales start at ~1, a single bit whatever f is
        if v.path.endswith('/gamma'):
            v.assign(np.random.default_rng(3).uniform(0.3, 3.0, size=v.shape))
    hgq.calibrate(model, _feed(_inputs(case, n=64)))
    before = float(layer.ebops()), layer.exact_ebops()
    assert before[0] > 0 and before[1] > 0
    quantizers = [layer.input_quantizer]
    quantizers += [layer.kernel_quantizer] if hasattr(layer, 'kernel_quantizer') else []
    quantizers += [layer.scale_quantizer] if hasattr(layer, 'scale_quantizer') else []
    quantizers += layer.activation_quantizers[1:]
    for quantizer in quantizers:
        quantizer.f.assign(quantizer.f + 1.0)
        after = float(layer.ebops()), layer.exact_ebops()
        assert after[0] > before[0] and after[1] > before[1], quantizer.name
        before = after
    assert hgq.layer_ebops(model)[layer.name] == before[1]


@pytest.mark.parametrize('name', sorted(set(CASES) - set(MULTIPLIER_CASES)))
def test_layers_without_multipliers_have_zero_ebops(name):
    model, layer = _model(CASES[name])
    assert float(layer.ebops()) == 0.0 and layer.exact_ebops() == 0.0
    assert hgq.ebops(model) == 0.0


def test_channel_granularity_gives_one_bitwidth_per_input_channel_and_per_output_filter():
    layer = HConv2D(4, 3, input_quantizer={'granularity': 'channel'}, kernel_quantizer={'granularity': 'channel'})
    layer.build((None, 6, 6, 3))
    assert layer.input_quantizer.f.shape == (1, 1, 3)
    assert layer.kernel_quantizer.f.shape == (1, 1, 1, 4)
    assert all(a.shape == (6, 6, 3) for a in layer.input_quantizer.kif())
    dense = HDense(5, kernel_quantizer={'granularity': 'channel'})
    dense.build((None, 7))
    assert dense.kernel_quantizer.f.shape == (1, 5)


def test_plain_keras_layers_between_h_layers_train_save_and_calibrate(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            HQuantize(),
            HConv2D(4, 3, activation='relu', beta=1e-5),
            keras.layers.Permute((2, 1, 3)),
            keras.layers.Reshape((4, 16)),
            HDense(3, activation='relu', beta=1e-5),
            keras.layers.Dropout(0.3),
            keras.layers.Flatten(),
            HDense(2, beta=1e-5),
        ]
    )
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype('float32')
    model.compile('adam', 'mse')
    model.fit(x, np.zeros((64, 2), 'float32'), epochs=1, batch_size=32, verbose=0)
    exact = hgq.calibrate(model, x)
    h_layers_with_multipliers = {layer.name for layer in model.layers if isinstance(layer, HConv2D | HDense)}
    assert exact > 0 and set(hgq.layer_ebops(model)) == h_layers_with_multipliers
    model.save(tmp_path / 'm.keras')
    loaded = keras.models.load_model(tmp_path / 'm.keras')
    assert np.array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert hgq.ebops(loaded) == exact


def test_calibrate_sets_each_merge_input_range_from_its_own_input():
    a, b = keras.Input((3,)), keras.Input((3,))
    merged = HMultiply(name='mul')([HDense(3, name='da')(a), HDense(3, name='db')(b)])
    out = HConcatenate(name='cat')([HAdd(name='add')([a, merged]), b])
    model = keras.Model([a, b], out)
    rng = np.random.default_rng(0)
    xa = rng.uniform(-1, 1, (200, 3)).astype('float32')
    xb = rng.uniform(10, 40, (200, 3)).astype('float32')
    hgq.calibrate(model, [xa, xb])
    add, cat = model.get_layer('add'), model.get_layer('cat')
    np.testing.assert_array_equal(add.activation_quantizers[0].vmax.numpy(), xa.max(axis=0))
    np.testing.assert_array_equal(cat.activation_quantizers[1].vmin.numpy(), xb.min(axis=0))
    np.testing.assert_array_equal(cat.activation_quantizers[1].vmax.numpy(), xb.max(axis=0))
    assert np.all(cat.activation_quantizers[1].kif()[1] == 6)  # 10..40 needs 6 integer bits
    # Nothing overflows after calibration: the concatenated second input comes out (rounded) unchanged.
    y = model.predict([xa, xb], verbose=0)
    np.testing.assert_allclose(y[:, 3:], xb, atol=2.0**-6)
    assert hgq.layer_ebops(model)['mul'] > 0


ERROR_CASES = {
    'dense units': (lambda: HDense(0, name='d1'), None, 'd1.*units'),
    'dense activation': (lambda: HDense(3, activation='tanh', name='d2'), None, 'd2.*activation'),
    'dense unknown last axis': (lambda: HDense(3, name='d3'), (None, None), 'd3.*fixed size'),
    'conv filters': (lambda: HConv2D(0, 3, name='c0'), None, 'c0.*filters'),
    'conv channels_first': (lambda: HConv2D(4, 3, data_format='channels_first', name='c1'), None, 'c1.*channels_last'),
    'conv dilation': (lambda: HConv2D(4, 3, dilation_rate=2, name='c2'), None, 'c2.*dilation_rate'),
    'conv padding': (lambda: HConv1D(4, 3, padding='causal', name='c3'), None, 'c3.*padding'),
    'conv kernel_size': (lambda: HConv2D(4, (3, 3, 3), name='c4'), None, 'c4.*kernel_size'),
    'conv pf': (lambda: HConv2D(4, 3, parallelization_factor=0, name='c5'), None, 'c5.*parallelization_factor'),
    'conv pf divisor': (
        lambda: HConv2D(4, 3, parallelization_factor=5, name='c6'),
        (None, 8, 8, 1),
        r'c6.*divide the 36 output positions',
    ),
    'conv rank': (lambda: HConv2D(4, 3, name='c7'), (None, 8, 1), 'c7.*rank 4'),
    'conv kernel too large': (lambda: HConv1D(4, 5, name='c8'), (None, 3, 1), 'c8.*larger than the input'),
    'conv unknown size': (lambda: HConv1D(4, 2, name='c9'), (None, None, 1), 'c9.*fixed size'),
    'bn axis': (lambda: HBatchNormalization(axis=1, name='b1'), (None, 4, 3), 'b1.*last axis'),
    'bn momentum': (lambda: HBatchNormalization(momentum=1.5, name='b2'), None, 'b2.*momentum'),
    'bn epsilon': (lambda: HDenseBatchNorm(3, epsilon=0.0, name='b3'), None, 'b3.*epsilon'),
    'merge shapes': (lambda: HAdd(name='m1'), [(None, 4), (None, 5)], 'm1.*same shape'),
    'merge count': (lambda: HSubtract(name='m2'), [(None, 4)] * 3, 'm2.*expected 2 inputs'),
    'merge single input': (lambda: HMultiply(name='m3'), (None, 4), 'm3.*list of input'),
    'concat axis': (lambda: HConcatenate(axis=0, name='m4'), [(None, 4), (None, 4)], 'm4.*non-batch axis'),
    'concat shapes': (lambda: HConcatenate(name='m5'), [(None, 2, 4), (None, 3, 4)], 'm5.*except along axis'),
    'avg pool size': (lambda: HAveragePooling2D(3, name='p1'), None, 'p1.*power-of-two'),
    'avg pool padding': (lambda: HAveragePooling1D(2, padding='same', name='p2'), None, "p2.*padding='valid'"),
    'global avg positions': (lambda: HGlobalAveragePooling2D(name='p3'), (None, 3, 3, 2), 'p3.*power-of-two'),
    'pool rank': (lambda: HMaxPooling2D(name='p4'), (None, 8, 2), 'p4.*rank 4'),
    'pool too large': (lambda: HMaxPooling2D(9, name='p5'), (None, 8, 8, 1), 'p5.*larger than the input'),
    'pool strides': (lambda: HMaxPooling1D(2, strides=0, name='p6'), None, 'p6.*strides'),
    'pool data_format': (
        lambda: HGlobalAveragePooling1D(data_format='channels_first', name='p7'),
        None,
        'p7.*channels',
    ),
}


@pytest.mark.parametrize('name', ERROR_CASES)
def test_invalid_arguments_and_shapes_raise_errors_naming_the_layer(name):
    make, shape, match = ERROR_CASES[name]
    with pytest.raises(ValueError, match=match):
        make().build(shape) if shape is not None else make()


def test_fused_batchnorm_rejects_bias_arguments():
    with pytest.raises(TypeError, match='HConv2DBatchNorm.*use_bias'):
        HConv2DBatchNorm(4, 3, use_bias=False)
