"""HSoftmax: table-based softmax, Keras side and hls4ml C-simulation bit-exactness."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from csim import assert_csim_bit_exact
from learning import check_every_variable_learns

import hgq
from hgq.fixed_point import quantize
from hgq.layers import HDense, HQuantize, HSoftmax
from hgq.layers.activation import scalar_kif

RNG = np.random.default_rng(11)

MANY_BITS = {
    'input_quantizer': {'f_init': 10},
    'exp_input_quantizer': {'i_init': 4, 'f_init': 8},
    'exp_quantizer': {'f_init': 14},
    'sum_quantizer': {'i_init': 4, 'f_init': 9},
    'inv_quantizer': {'f_init': 14},
    'output_quantizer': {'f_init': 14},
}


def _np(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


def _single(shape=(5,), **kwargs) -> keras.Model:
    return keras.Sequential([keras.Input(shape), HSoftmax(**kwargs)])


def _q(quantizer, x: np.ndarray) -> np.ndarray:
    k, i, f = scalar_kif(quantizer)
    return quantize(x, k, i, f, quantizer.round_mode, quantizer.overflow_mode)


def numpy_softmax(layer: HSoftmax, x: np.ndarray) -> np.ndarray:
    """The documented algorithm in float64 numpy, from the exported tables and formats."""
    exp_table, inv_table = layer.tables()
    xq = _np(layer.input_quantizer(x))
    d = _q(layer.exp_input_quantizer, xq.max(axis=-1, keepdims=True) - xq)
    e = exp_table[np.round(d * 2.0 ** scalar_kif(layer.exp_input_quantizer)[2]).astype(np.int64)]
    s = _q(layer.sum_quantizer, e.sum(axis=-1, keepdims=True))
    r = inv_table[np.round(s * 2.0 ** scalar_kif(layer.sum_quantizer)[2]).astype(np.int64)]
    return _q(layer.output_quantizer, e * r)


@pytest.mark.parametrize('shape', [(5,), (3, 7)])
def test_matches_numpy_reference_exactly(shape):
    model = _single(shape)
    x = (RNG.normal(size=(400, *shape)) * 4).astype('float32')  # saturates the input and the exp input
    y = model.predict(x, verbose=0)
    assert np.array_equal(y.astype(np.float64), numpy_softmax(model.layers[-1], x))


def test_tables_are_quantized_exp_and_reciprocal():
    layer = _single().layers[-1]
    exp_table, inv_table = layer.tables()
    assert exp_table.shape == (2 ** (3 + 4),) and inv_table.shape == (2 ** (4 + 4),)
    codes = np.arange(128)
    assert np.array_equal(exp_table, quantize(np.exp(-(codes / 16.0)), 0, 1, 8, 'RND', 'SAT'))
    codes = np.arange(1, 256)
    expected = quantize(1.0 / (codes / 16.0), 0, 1, 8, 'RND', 'SAT')
    assert np.array_equal(inv_table[1:], expected)
    assert inv_table[0] == 2 - 2**-8  # 1/0 saturates


def test_close_to_float_softmax_with_many_bits():
    model = _single((10,), **MANY_BITS)
    x = (RNG.normal(size=(300, 10)) * 3).astype('float32')
    y = model.predict(x, verbose=0)
    assert np.max(np.abs(y - _np(keras.ops.softmax(x)))) < 2e-3


def test_training_forward_close_to_inference():
    model = _single((6,))
    x = (RNG.normal(size=(200, 6)) * 2).astype('float32')
    assert np.max(np.abs(_np(model(x, training=True)) - model.predict(x, verbose=0))) < 0.02


def test_save_load_round_trip(tmp_path):
    x = RNG.normal(size=(200, 6)).astype('float32')
    model = keras.Sequential([keras.Input((6,)), HDense(4), HSoftmax(beta=1e-5)])
    rng = np.random.default_rng(3)
    for variable in model.trainable_variables:  # move the bits away from their initial values, as training would
        if variable.path.endswith('/f') or variable.path.endswith('/i'):
            variable.assign(variable + rng.uniform(-1.4, 1.4, size=variable.shape).astype('float32'))
    hgq.calibrate(model, x)
    path = tmp_path / 'softmax.keras'
    model.save(path)
    loaded = keras.models.load_model(path)
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    a, b = model.layers[-1], loaded.layers[-1]
    assert a.get_config() == b.get_config()
    for va, vb in zip(a.weights, b.weights, strict=True):
        assert np.array_equal(_np(va), _np(vb))
    for ta, tb in zip(a.tables(), b.tables(), strict=True):
        assert np.array_equal(ta, tb)


def test_gradient_reaches_every_trainable_variable():
    # Small integer bits so that every saturating quantizer clips some values and passes gradient to its i.
    small = {
        'input_quantizer': {'i_init': 1},
        'exp_input_quantizer': {'i_init': 0},
        'exp_quantizer': {'i_init': 0},
        'sum_quantizer': {'i_init': 1},
        'inv_quantizer': {'i_init': 0},
        'output_quantizer': {'i_init': -1},
    }
    model = _single((6,), beta=1e-4, **small)
    x = (RNG.normal(size=(256, 6)) * 3).astype('float32')
    target = RNG.uniform(size=(256, 6)).astype('float32')
    with tf.GradientTape() as tape:
        loss = keras.ops.mean((model(x, training=True) - target) ** 2) + sum(model.losses)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    assert len(variables) == 24  # f and i of six quantizers, and their step variables
    check_every_variable_learns(variables, [None if grad is None else _np(grad) for grad in grads])


def test_ebops():
    layer = _single((5,)).layers[-1]
    exp_table, inv_table = layer.tables()
    assert (exp_table.size, inv_table.size) == (128, 256)
    # 5 multiplications of 9-bit exp values by 9-bit reciprocals; tables: 5 x 9 x 2 and 1 x 9 x 4 LUTs
    assert layer.exact_ebops() == 5 * 9 * 9 + 5 * 9 * 2 + 9 * 4
    assert float(layer.ebops()) == layer.exact_ebops()


def test_errors():
    with pytest.raises(ValueError, match='only axis=-1'):
        HSoftmax(axis=1)
    with pytest.raises(ValueError, match="granularity='tensor'"):
        HSoftmax(output_quantizer={'granularity': 'element'})
    with pytest.raises(ValueError, match='must saturate'):
        HSoftmax(sum_quantizer={'overflow_mode': 'WRAP'})
    with pytest.raises(ValueError, match='not built'):
        HSoftmax().tables()
    big = _single((4,), sum_quantizer={'i_init': 6, 'f_init': 12})
    with pytest.raises(ValueError, match='262144 entries, more than max_table_size=65536'):
        big.layers[-1].tables()
    x = RNG.normal(size=(20, 4)).astype('float32')
    assert np.max(np.abs(big.predict(x, verbose=0) - _np(keras.ops.softmax(x)))) < 0.02  # computed directly


# ---------------------------------------------------------------------------------------------------------------
# hls4ml C simulation


@pytest.mark.slow
def test_csim_softmax_after_dense(tmp_path):
    model = keras.Sequential([keras.Input((8,)), HQuantize(), HDense(10), HSoftmax()])
    y = assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)) * 2, tmp_path)
    assert np.unique(y).size > 100


@pytest.mark.slow
def test_csim_softmax_slices_wrap_input(tmp_path):
    layer = HSoftmax(input_quantizer={'overflow_mode': 'WRAP', 'f_init': 5}, output_quantizer={'f_init': 10})
    model = keras.Sequential([keras.Input((4, 6)), layer])
    assert_csim_bit_exact(model, RNG.normal(size=(5000, 4, 6)) * 3, tmp_path)


@pytest.mark.slow
def test_csim_softmax_stream(tmp_path):
    model = keras.Sequential([keras.Input((8,)), HQuantize(), HDense(5), HSoftmax()])
    assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)), tmp_path, io_type='io_stream')
