"""HActivation: relu and lookup tables, Keras side and hls4ml C-simulation bit-exactness."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from csim import assert_csim_bit_exact
from learning import check_every_variable_learns

import hgq
from hgq.convert.tables import hardware_table
from hgq.fixed_point import quantize
from hgq.layers import HActivation, HDense, HQuantize

RNG = np.random.default_rng(7)


@keras.saving.register_keras_serializable(package='hgq_tests')
def swish_like(x):
    """A user activation: keras tensors in, keras tensors out."""
    return x * keras.ops.sigmoid(1.5 * x)


def _np(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


def _single(activation, shape=(6,), **kwargs) -> keras.Model:
    return keras.Sequential([keras.Input(shape), HActivation(activation, **kwargs)])


def _codes(layer: HActivation, x: np.ndarray) -> np.ndarray:
    """Table index of every input: code of the quantized input minus the smallest code."""
    k, i, f = layer.table_format()
    xq = _np(layer.input_quantizer(x))
    return (np.round(xq * 2.0**f) + k * 2.0 ** (i + f)).astype(np.int64)


@pytest.mark.parametrize('activation', ['tanh', 'sigmoid', 'gelu', swish_like])
def test_output_is_table_at_input_code(activation):
    model = _single(activation)
    layer = model.layers[-1]
    x = (RNG.normal(size=(500, 6)) * 6).astype('float32')  # beyond the table range [-8, 8): saturates
    y = model.predict(x, verbose=0)
    table = layer.table()
    assert table.shape == (2 ** sum(layer.table_format()),)
    assert np.array_equal(y, table[_codes(layer, x)].astype('float32'))


@pytest.mark.parametrize('activation, reference', [('tanh', np.tanh), ('sigmoid', lambda v: 1 / (1 + np.exp(-v)))])
def test_close_to_float_with_many_bits(activation, reference):
    model = _single(activation, input_quantizer={'f_init': 10}, output_quantizer={'f_init': 14})
    x = RNG.uniform(-7, 7, size=(400, 6)).astype('float32')
    y = model.predict(x, verbose=0)
    assert np.max(np.abs(y - reference(x))) < 2e-3


def test_table_entries_are_quantized_function_values():
    model = _single('tanh', input_quantizer={'i_init': 2, 'f_init': 3}, output_quantizer={'i_init': 0, 'f_init': 5})
    layer = model.layers[-1]
    assert layer.table_format() == (1, 2, 3)
    codes = np.arange(-32, 32)
    expected = quantize(np.tanh(codes / 8.0), 1, 0, 5, 'RND', 'SAT')
    assert np.array_equal(layer.table(), expected)


def test_hardware_table_is_in_bit_pattern_order():
    model = _single('tanh', input_quantizer={'i_init': 1, 'f_init': 1})  # codes -4..3, values -2..1.5
    layer = model.layers[-1]
    table = layer.table()
    hw = hardware_table(table, *layer.table_format())
    for code in range(-4, 4):
        assert hw[code % 8] == table[code + 4]


def test_relu_is_exact_after_per_element_input_quantizer():
    model = _single('relu')
    layer = model.layers[-1]
    assert layer.input_quantizer.granularity == 'element' and not layer.is_lut
    x = RNG.normal(size=(100, 6)).astype('float32')
    assert np.array_equal(model.predict(x, verbose=0), np.maximum(_np(layer.input_quantizer(x)), 0).astype('float32'))
    assert layer.exact_ebops() == 0.0


def test_pruned_input_gives_one_entry_table():
    model = _single('sigmoid', input_quantizer={'i_init': -3, 'f_init': 2})  # k + i + f = 0
    layer = model.layers[-1]
    assert layer.table_format() == (0, 0, 0)
    assert layer.table().tolist() == [0.5]
    assert np.all(model.predict(RNG.normal(size=(10, 6)), verbose=0) == 0.5)


def _perturb_bits(model, seed=0):
    """Move every fractional-bit variable away from its initial value, as training would."""
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        if variable.path.endswith('/f'):
            variable.assign(variable + rng.uniform(-1.4, 1.4, size=variable.shape).astype('float32'))


def test_save_load_round_trip(tmp_path):
    x = RNG.normal(size=(300, 5)).astype('float32')
    model = keras.Sequential(
        [
            keras.Input((5,)),
            HDense(6, activation='relu'),
            HActivation(swish_like, input_quantizer={'overflow_mode': 'WRAP'}),
            HDense(4),
            HActivation('tanh', beta=1e-5, output_quantizer={'overflow_mode': 'SAT_SYM', 'round_mode': 'RND_CONV'}),
            HActivation('relu'),
        ]
    )
    _perturb_bits(model)
    hgq.calibrate(model, x)
    path = tmp_path / 'act.keras'
    model.save(path)
    loaded = keras.models.load_model(path)
    assert np.array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(model.layers, loaded.layers, strict=True):
        assert a.get_config() == b.get_config()
        for va, vb in zip(a.weights, b.weights, strict=True):
            assert np.array_equal(_np(va), _np(vb))
    for a, b in zip(model.layers[1:4:2], loaded.layers[1:4:2], strict=True):
        assert np.array_equal(a.table(), b.table())


def test_gradient_reaches_every_trainable_variable():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            HActivation('tanh', input_quantizer={'i_init': 1}, output_quantizer={'i_init': -1}, beta=1e-3),
        ]
    )
    x = (RNG.normal(size=(256, 6)) * 3).astype('float32')  # saturates both the input and the output (> 0.5)
    target = RNG.normal(size=(256, 6)).astype('float32')
    with tf.GradientTape() as tape:
        loss = keras.ops.mean((model(x, training=True) - target) ** 2) + sum(model.losses)
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    assert len(variables) == 8  # f and i of the input and output quantizers, and their step variables
    check_every_variable_learns(variables, [None if grad is None else _np(grad) for grad in grads])


def test_ebops_is_table_cost():
    model = _single('tanh', shape=(4,), input_quantizer={'i_init': 3, 'f_init': 5})
    layer = model.layers[-1]
    # 9-bit input (512 entries), table values in [-1, 1] with 8 fractional bits: 10 bits -> 4 * 10 * 2**3
    assert layer.exact_ebops() == 4 * 10 * 8
    assert float(layer.ebops()) == 4 * 10 * 8  # differentiable estimate: the output quantizer's 1 + 1 + 8 bits
    assert hgq.ebops(model) == 320


def test_errors():
    with pytest.raises(ValueError, match='unknown activation .*nope'):
        HActivation('nope')
    with pytest.raises(ValueError, match='not element-wise; use hgq.layers.HSoftmax'):
        HActivation('softmax')
    with pytest.raises(ValueError, match="granularity='tensor'"):
        HActivation('tanh', input_quantizer={'granularity': 'element'})
    with pytest.raises(ValueError, match='must saturate'):
        HActivation('tanh', output_quantizer={'overflow_mode': 'WRAP'})
    with pytest.raises(ValueError, match='relu is exact'):
        HActivation('relu', output_quantizer={})
    with pytest.raises(ValueError, match='relu has no lookup table'):
        _single('relu').layers[-1].table()
    big = _single('tanh', input_quantizer={'i_init': 3, 'f_init': 14})  # 2**18 entries
    with pytest.raises(ValueError, match='262144 entries, more than max_table_size=65536'):
        big.layers[-1].table()
    x = RNG.uniform(-4, 4, size=(50, 6)).astype('float32')
    assert np.max(np.abs(big.predict(x, verbose=0) - np.tanh(x))) < 4e-3  # too large a table: computed directly


# ---------------------------------------------------------------------------------------------------------------
# hls4ml C simulation


def _dense_model(*layers, n_in=8):
    return keras.Sequential([keras.Input((n_in,)), HQuantize(), HDense(6), *layers])


@pytest.mark.slow
def test_csim_tanh(tmp_path):
    model = _dense_model(HActivation('tanh'), HDense(4))
    y = assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)) * 2, tmp_path)
    assert np.unique(y).size > 100


@pytest.mark.slow
def test_csim_user_function_unsigned_wrap_input(tmp_path):
    act = HActivation(swish_like, input_quantizer={'overflow_mode': 'WRAP', 'f_init': 4})
    model = keras.Sequential([keras.Input((8,)), HQuantize(), HDense(6, activation='relu'), act])
    y = assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)), tmp_path)
    assert act.table_format()[0] == 0  # relu output: unsigned table input
    assert np.unique(y).size > 20


@pytest.mark.slow
def test_csim_sigmoid_stream(tmp_path):
    model = _dense_model(HActivation('sigmoid', input_quantizer={'i_init': 2, 'f_init': 4}))
    assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)), tmp_path, io_type='io_stream')


@pytest.mark.slow
def test_csim_relu(tmp_path):
    model = _dense_model(HActivation('relu'), HDense(3))
    assert_csim_bit_exact(model, RNG.normal(size=(5000, 8)), tmp_path)
