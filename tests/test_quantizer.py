"""Trainable quantizers: forward values, the HGQ surrogate gradients, range tracking, configs and errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from learning import step_variable

from hgq.fixed_point import quantize
from hgq.layers import HDense, HQuantize
from hgq.quantizer import BITS_DECAY, ActivationQuantizer, WeightQuantizer, bits_shape, effective_bits

LN2 = math.log(2.0)


def _random_f(quantizer, low, high, seed=0):
    rng = np.random.default_rng(seed)
    quantizer.f.assign(rng.uniform(low, high, quantizer.f.shape).astype('float32'))


def _grads(quantizer, x, variables, training=True):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        q = quantizer(x, training=training)
        total = tf.reduce_sum(q)
    return q.numpy(), tape.gradient(total, x).numpy(), [tape.gradient(total, v).numpy() for v in variables]


def test_bits_shape_for_each_granularity():
    assert bits_shape((4, 5, 3), 'element') == (4, 5, 3)
    assert bits_shape((4, 5, 3), 'channel') == (1, 1, 3)
    assert bits_shape((4, 5, 3), 'channel', channel_axis=0) == (4, 1, 1)
    assert bits_shape((4, 5, 3), 'tensor') == (1, 1, 1)
    with pytest.raises(ValueError, match='granularity'):
        bits_shape((3,), 'row')


def test_activation_forward_matches_numpy_reference_in_every_mode():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(256, 6)) * 8).astype('float32')
    for overflow in ('WRAP', 'SAT', 'SAT_SYM'):
        for round_mode in ('TRN', 'RND', 'RND_CONV'):
            q = ActivationQuantizer(overflow_mode=overflow, round_mode=round_mode, i_init=2)
            q.build(x.shape)
            _random_f(q, -1.5, 5.5)
            k, i, f = q.kif()
            expected = quantize(x, k, i, f, round_mode, overflow)
            assert np.array_equal(q(x).numpy(), expected), (overflow, round_mode)


def test_wrap_training_gradients_follow_the_hgq_rule():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 10)).astype('float32') * 3
    q = ActivationQuantizer(f_init=2.0)
    q.build(x.shape)
    _random_f(q, 0.6, 4.4)
    out, dx, (df,) = _grads(q, x, [step_variable(q, q.f)])
    assert np.array_equal(dx, np.ones_like(x)), 'straight-through: dq/dx must be 1'
    expected_df = np.sum(-LN2 * (out - x), axis=0)
    np.testing.assert_allclose(df, expected_df, rtol=1e-5, atol=1e-5)
    assert np.any(np.abs(df) > 1e-3)


def test_sat_gradients_reach_integer_bits_through_the_clip_bound():
    x = np.array([[0.3, 9.0, -9.0, -0.7]], dtype='float32')
    q = ActivationQuantizer(f_init=3.0, overflow_mode='SAT', i_init=1.0)
    q.build(x.shape)
    out, dx, (df, di) = _grads(q, x, [step_variable(q, q.f), step_variable(q, q.i)])
    assert out.tolist() == [[0.25, 1.875, -2.0, -0.75]]
    assert dx.tolist() == [[1.0, 0.0, 0.0, 1.0]], 'saturated values give no gradient to x'
    np.testing.assert_allclose(di, [0.0, LN2 * 2.0, -LN2 * 2.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(df, [-LN2 * (0.25 - 0.3), LN2 * 2**-3, 0.0, -LN2 * (-0.75 + 0.7)], rtol=1e-5)


def test_weight_gradients_follow_the_hgq_rule():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(7, 5)).astype('float32') * 0.2
    q = WeightQuantizer(granularity='channel')
    q.build(w.shape)
    q.fit_initial_bits(w)
    out, dw, (df,) = _grads(q, w, [step_variable(q, q.f)], training=None)
    assert np.array_equal(dw, np.ones_like(w))
    np.testing.assert_allclose(df, np.sum(-LN2 * (out - w), axis=0, keepdims=True), rtol=1e-5, atol=1e-6)


def test_forward_uses_integer_bits():
    q = WeightQuantizer(f_init=2.4)
    q.build((3,))
    w = np.array([0.3, 0.58, -0.9], dtype='float32')
    assert q(w).numpy().tolist() == [0.25, 0.5, -1.0]
    q.f.assign(np.full((3,), 2.6, dtype='float32'))
    assert q(w).numpy().tolist() == [0.25, 0.625, -0.875]


def test_initial_weight_bits_keep_weights_nonzero():
    for scale in (1e-4, 1e-2, 1.0, 300.0):
        w = np.random.default_rng(4).normal(size=(64, 32)).astype('float32') * scale
        for granularity in ('element', 'channel', 'tensor'):
            q = WeightQuantizer(granularity=granularity)
            q.build(w.shape)
            q.fit_initial_bits(w)
            nonzero = np.mean(q(w).numpy() != 0)
            assert nonzero > 0.8, (scale, granularity, nonzero)
            bits = q.exact_bits(w)
            assert 2 <= np.median(bits[bits > 0]) <= 6


def test_effective_bits_count_msb_to_lsb_span():
    assert effective_bits([0.0, 1.0, 0.75, -6.0, 5.0, 2**-9, 1.5 * 2**20]).tolist() == [0, 1, 2, 2, 3, 1, 2]


def test_wrap_range_tracking_and_set_range():
    q = ActivationQuantizer(f_init=2.0, granularity='channel', momentum=0.5, i_init=6.0)
    x = np.concatenate([np.full((4, 3, 1), 3.0), np.full((4, 3, 1), -0.5)], axis=-1).astype('float32')
    q.build(x.shape)
    for _ in range(30):
        q(x, training=True)
    k, i, f = q.kif()
    assert k.shape == (3, 2)
    assert k[0].tolist() == [0, 1] and i[0].tolist() == [2, -1] and f[0].tolist() == [2, 2]
    q.set_range(np.array([[0.0, -4.0]]), np.array([[0.1, 0.0]]))
    k, i, f = q.kif()
    assert k[0].tolist() == [0, 1] and i[0].tolist() == [-2, 2], '0.1 rounds to 0 with f=2: pruned'
    bits = q.bits().numpy()
    assert bits[0].tolist() == [0.0, 5.0]


def test_all_zero_range_prunes_the_element():
    q = ActivationQuantizer(f_init=3.0)
    q.build((None, 2))
    q.set_range(np.array([0.0, -1.0]), np.array([0.01, 1.0]))
    assert q.bits().numpy().tolist() == [0.0, 5.0]
    assert q(np.array([[0.01, 0.5]], dtype='float32')).numpy().tolist() == [[0.0, 0.5]]


def test_quantizers_round_trip_through_config():
    for q in (
        ActivationQuantizer(granularity='channel', f_init=3, overflow_mode='SAT_SYM', round_mode='TRN', bits_l1=1e-4),
        WeightQuantizer(granularity='tensor', f_init=5, round_mode='RND_CONV'),
    ):
        clone = type(q).from_config(q.get_config())
        assert clone.get_config() == q.get_config()


@pytest.mark.parametrize(
    'kwargs, match',
    [
        ({'granularity': 'pixel'}, 'granularity'),
        ({'overflow_mode': 'CLIP'}, 'overflow_mode'),
        ({'round_mode': 'NEAREST'}, 'round_mode'),
        ({'momentum': 1.5}, 'momentum'),
        ({'bits_l1': -1.0}, 'bits_l1'),
    ],
)
def test_invalid_activation_quantizer_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ActivationQuantizer(**kwargs)


def test_unknown_shape_and_rank_mismatch_raise():
    q = ActivationQuantizer(name='my_q')
    with pytest.raises(ValueError, match='my_q.*fixed size'):
        q.build((None, None, 3))
    q = ActivationQuantizer(name='other_q')
    q.build((None, 4))
    with pytest.raises(ValueError, match='other_q.*shape'):
        q(np.zeros((2, 4, 1), dtype='float32'))


def test_regression_toy_learns_bits_where_error_hurts_and_prunes_under_l1():
    """y = 3 * x0: bits of x0 grow under the task loss; bits of the useless x1 shrink under the L1 push."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2048, 2)).astype('float32')
    y = 3.0 * x[:, :1]
    layer = HDense(1, input_quantizer={'f_init': 2.0, 'bits_l1': 1e-3}, kernel_quantizer={'f_init': 8.0})
    model = keras.Sequential([keras.Input((2,)), layer])
    model.compile(keras.optimizers.Adam(0.05), 'mse')
    f_before = layer.input_quantizer.f.numpy().copy()
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    f_after = layer.input_quantizer.f.numpy()
    assert f_after[0] > f_before[0] + 2, f'bits of the informative input should grow: {f_before} -> {f_after}'
    assert f_after[1] < f_before[1] - 1, f'bits of the useless input should shrink: {f_before} -> {f_after}'


def test_weight_bits_l1_is_a_training_loss_and_bits_is_a_pure_query():
    """The L1 push on weight bits is added by the training forward pass; asking for ``bits()`` adds nothing."""
    quantizer = WeightQuantizer(f_init=4.0, bits_l1=1e-2, bits_decay=0.0)
    w = keras.ops.convert_to_tensor(np.array([[0.75, -0.5], [0.0, 0.3125]], dtype='float32'))
    quantizer(w, training=False)
    bits = quantizer.bits(w)
    assert quantizer.losses == []
    quantizer(w, training=True)
    assert len(quantizer.losses) == 1
    assert float(keras.ops.sum(bits)) == 11.0  # 0.75 -> 4 bits (f = 4 counts to 2**-4), -0.5 -> 4, 0 -> 0, 0.3125 -> 3
    assert float(quantizer.losses[0]) == float(np.float32(1e-2) * np.float32(11.0))


def test_bits_decay_trims_bits_the_loss_does_not_need_and_stops_at_zero():
    """beta = 0: inputs exact at 2 fractional bits lose the rest of f_init = 6; an always-zero input stops at f = 0.

    Without the default pull nothing moves these bits (the quantization error, hence the gradient, is 0), so a
    ``beta = 0`` model keeps every initial bit; ``bits_decay=0`` shows that.
    """
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 12, 512) / 4.0, np.zeros(512)], axis=1).astype('float32')
    f_end = {}
    for decay in (None, 0.0):
        keras.utils.set_random_seed(0)
        conf = {'f_init': 6.0} if decay is None else {'f_init': 6.0, 'bits_decay': decay}
        layer = HQuantize(input_quantizer=conf)
        model = keras.Sequential([keras.Input((2,)), layer])
        model.compile(keras.optimizers.Adam(0.03), 'mse')
        model.fit(x, x, epochs=16, batch_size=8, verbose=0)
        f_end[decay] = layer.input_quantizer.f.numpy()
    assert layer.input_quantizer.bits_decay == 0.0 and HQuantize().input_quantizer.bits_decay == BITS_DECAY > 0
    np.testing.assert_array_equal(f_end[0.0], [6.0, 6.0])  # no force at all without the pull
    exact, zero = f_end[None]
    # Trimmed by at least 1.5 bits, never resting below the 2 the data needs (crossing it costs loss, which pushes
    # back, and Adam's memory of that larger gradient slows the pull afterwards).
    assert 1.5 <= exact <= 4.5, f'exact at 2 fractional bits: f should fall from 6 towards 2, got {exact}'
    assert -0.5 < zero < 0.5, f'the pull stops at 0: got {zero}'
