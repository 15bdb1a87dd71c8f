"""The mechanisms that let training reach the low-cost end of the accuracy-vs-EBOPs front.

Each test pins one of them: a bit learning rate of its own (``bits_lr_scale``), WRAP quantizers that cross from
1 bit to exactly 0 bits, input quantizers whose bits cost something in the loss, and ranges tracked from the first
batch so that logged EBOPs are close to calibrated ones from the first epoch.
"""

from itertools import pairwise

import keras
import numpy as np
import pytest
import tensorflow as tf
from learning import step_variable

import hgq
from hgq.ebops import h_layers
from hgq.layers import HDense, HQuantize
from hgq.quantizer import BITS_LR_SCALE, ActivationQuantizer, ScaledStep, WeightQuantizer


@pytest.fixture(scope='module')
def digits():
    data = hgq.datasets.digits()
    return data.x_train, data.y_train


def _compile(model, learning_rate=3e-3):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(learning_rate), loss, metrics=['accuracy'])
    return model


def _mlp(beta, seed=0, **quantize):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            HQuantize(beta=beta, **quantize),
            HDense(16, activation='relu', beta=beta),
            HDense(10, beta=beta),
        ]
    )
    return _compile(model)


# -- bit learning rate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('make', [ActivationQuantizer, WeightQuantizer], ids=['activation', 'weight'])
@pytest.mark.parametrize('optimizer', ['adam', 'sgd'])
def test_bits_lr_scale_multiplies_every_optimizer_step_of_f(make, optimizer):
    x = np.random.default_rng(0).normal(size=(32, 6)).astype('float32')
    steps = {}
    for scale in (1.0, 4.0):
        q = make(bits_lr_scale=scale, f_init=3.0)
        q.build(x.shape if make is ActivationQuantizer else x.shape[1:])
        opt = keras.optimizers.get(optimizer)
        data = x if make is ActivationQuantizer else x[0]
        before = q.f.numpy().copy()
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(q(data, training=True) - data)) + tf.reduce_sum(q.f_int)
            variables = q.trainable_weights
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        steps[scale] = q.f.numpy() - before
    assert np.all(np.abs(steps[1.0]) > 0)
    np.testing.assert_allclose(steps[4.0], 4.0 * steps[1.0], rtol=1e-4, atol=1e-6)


def test_step_variables_are_not_saved_and_assignments_between_steps_are_kept():
    q = ActivationQuantizer(bits_lr_scale=3.0)
    q.build((None, 4))
    assert [v.name for v in q.weights] == ['f', 'f_step', 'vmin', 'vmax', 'calibrated', 'range_started', 'train_peak']
    step = q.trainable_weights[1]
    assert isinstance(step.constraint, ScaledStep) and step.constraint.variable is q.f
    assert q.get_config()['bits_lr_scale'] == 3.0
    q.f.assign(np.full(4, 2.0, 'float32'))  # a user's assignment: the next step starts from it
    step.assign(np.full(4, -0.1, 'float32'))  # an optimizer update
    step.assign(step.constraint(step))
    np.testing.assert_allclose(q.f.numpy(), 2.0 - 0.3, rtol=1e-6)
    assert step.numpy().tolist() == [0.0] * 4
    # Saved: the variables of files written before step variables existed, in their order; loads reset the steps.
    store = {}
    q.save_own_variables(store)
    assert len(store) == 6 and np.array_equal(np.asarray(store['0']), q.f.numpy())
    step.assign(np.ones(4, 'float32'))
    q.load_own_variables(store)
    assert step.numpy().tolist() == [0.0] * 4
    del store['5']
    with pytest.raises(ValueError, match=rf'{q.name}: the saved quantizer holds 5 variables, expected 6'):
        q.load_own_variables(store)
    assert ActivationQuantizer(bits_lr_scale=1.0).bits_lr_scale == 1.0
    with pytest.raises(ValueError, match='bits_lr_scale'):
        ActivationQuantizer(bits_lr_scale=0.0)


def test_default_bit_learning_rate_moves_the_front_further_than_plain_adam(digits):
    """Raising beta 10x keeps cutting EBOPs with the default bit learning rate; with plain Adam it barely does."""
    x, y = digits
    spec = {'bits_lr_scale': 1.0}
    plain = {'input_quantizer': spec, 'kernel_quantizer': spec, 'bias_quantizer': spec}
    ebops = {}
    for scale_name, kwargs in (('default', {}), ('plain', plain)):
        for beta in (3e-5, 3e-4):
            keras.utils.set_random_seed(0)
            model = keras.Sequential(
                [
                    keras.Input((64,)),
                    HDense(16, activation='relu', beta=beta, **kwargs),
                    HDense(10, beta=beta, **kwargs),
                ]
            )
            _compile(model).fit(x, y, epochs=12, batch_size=64, verbose=0)
            ebops[scale_name, beta] = hgq.calibrate(model, x)
    print({k: round(v) for k, v in ebops.items()})
    assert BITS_LR_SCALE > 1
    assert ebops['default', 3e-4] < 0.8 * ebops['plain', 3e-4]
    assert ebops['default', 3e-4] / ebops['default', 3e-5] < ebops['plain', 3e-4] / ebops['plain', 3e-5]


# -- zero bits -----------------------------------------------------------------------------------------------------


def test_one_step_of_f_takes_a_wrap_element_from_one_bit_to_exactly_zero():
    x = np.linspace(0.0, 1.0, 17, dtype='float32')[:, None]  # digits pixels: 0 .. 16 / 16
    q = ActivationQuantizer(f_init=0.0)
    q.build((None, 1))
    q(x, training=True)  # the range seen in training: [0, 1]
    assert np.sum(q.kif()) == 1 and np.array_equal(q(x).numpy(), np.floor(x + 0.5))
    q.f.assign([-1.0])  # 1.0 / 2 would round up to one step of 2: that value wraps to 0 in a width-0 format
    k, i, f = q.kif()
    assert (k + i + f).tolist() == [0] and float(q.bits().numpy()[0]) == 0.0
    assert np.array_equal(q(x).numpy(), np.zeros_like(x))
    assert np.array_equal(q(x, training=True).numpy(), np.zeros_like(x)), 'training forward must match inference'
    assert np.array_equal(hgq.fixed_point.quantize(x, k, i, f, 'RND', 'WRAP'), np.zeros_like(x))
    q.set_range(-(2.0**20), 2.0**20)  # calibration observes with an open range: the same elements stay pruned
    assert np.sum(q.kif()) == 0 and np.array_equal(q(x).numpy(), np.zeros_like(x))
    untrained = ActivationQuantizer(f_init=-1.0)
    untrained.build((None, 1))
    untrained.set_range(0.0, 1.0)  # never trained: only values that round to 0 make an element 0 bits wide
    assert np.sum(untrained.kif()) == 1 and untrained(x).numpy().max() == 2.0


def test_pruned_element_passes_no_gradient_to_x_but_f_can_grow_back():
    x = tf.constant(np.full((8, 1), 0.75, 'float32'))
    q = ActivationQuantizer(f_init=0.0)
    q.build((None, 1))
    q(x, training=True)  # every value seen in training is below one step of 1: pruned
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = q(x, training=True)
        loss = tf.reduce_sum(tf.square(out - x))
    assert np.array_equal(out.numpy(), np.zeros((8, 1)))
    assert np.array_equal(tape.gradient(loss, x).numpy(), 2 * x.numpy())  # only the direct term (out - x)**2
    assert float(tape.gradient(loss, step_variable(q, q.f)).numpy()[0]) != 0.0


def test_training_prunes_on_the_range_before_the_batch_as_inference_does():
    """A rare large value does not revive an element that the current range prunes: training computes what the
    inference model of the same state computes (a batch decided on its own range would give 2.0 here)."""
    q = ActivationQuantizer(f_init=0.0)
    q.build((None, 2))
    q(np.array([[0.3, 5.0]], 'float32'), training=True)  # range of element 0 below one step of 1: pruned
    spike = np.array([[1.5, 5.0]], 'float32')
    inference = q(spike, training=False).numpy()
    training = q(spike, training=True).numpy()
    assert np.array_equal(training, inference) and training.tolist() == [[0.0, 5.0]]
    assert q(spike, training=True).numpy().tolist() == [[2.0, 5.0]]  # the widened range keeps it from now on


def test_wrap_input_elements_reach_zero_bits_under_ebops_pressure(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), HDense(16, activation='relu', beta=1e-3), HDense(10)])
    _compile(model, 1e-2).fit(x, y, epochs=10, batch_size=32, verbose=0)
    hgq.calibrate(model, x)
    dense = model.layers[0]
    widths = dense.input_bits_exact()
    never_zero = np.any(x != 0, axis=0)
    pruned = (widths == 0) & never_zero  # pixels with data whose input bits were pruned
    assert pruned.sum() >= 5, widths
    x_cut = x.copy()
    x_cut[:, pruned] = 0.0
    assert np.array_equal(model.predict(x, verbose=0), model.predict(x_cut, verbose=0))


# -- no free bits ----------------------------------------------------------------------------------------------------


def test_hquantize_bits_are_paid_in_the_loss_and_shrink_under_beta(digits):
    x, y = digits
    model = _mlp(1e-4)
    layer = model.layers[0]
    model(x[:4], training=True)
    width = float(keras.ops.sum(layer.input_quantizer.bits()).numpy())
    assert width > 0 and float(layer.bits_cost().numpy()) == width
    q = layer.input_quantizer
    decay = q.bits_decay * float(keras.ops.sum(keras.ops.relu(q.f)))  # the default pull of every bitwidth to 0
    assert sum(float(v) for v in layer.losses) == pytest.approx(1e-4 * width + decay, rel=1e-6)
    widths = {}
    for beta in (0.0, 1e-4):
        model = _mlp(beta)
        model.optimizer.learning_rate.assign(1e-2)
        model.fit(x, y, epochs=10, batch_size=32, verbose=0)
        hgq.calibrate(model, x)
        widths[beta] = model.layers[0].input_bits_exact().sum()
    assert widths[1e-4] < 0.6 * widths[0.0], widths
    # the first HDense counts its input bits in its EBOPs, so they pay no second time
    assert float(model.layers[1].bits_cost().numpy()) == 0.0


# -- ranges tracked from the first batch -----------------------------------------------------------------------------


def test_first_epoch_ebops_are_close_to_calibrated_ebops(digits):
    x, y = digits
    model = _mlp(1e-5)
    history = model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[hgq.callbacks.EBOPsLogger()])
    logged = history.history['ebops'][0]
    calibrated = hgq.calibrate(model, x)
    assert abs(logged / calibrated - 1) < 0.15, (logged, calibrated)
    explicit = ActivationQuantizer(i_init=4.0)
    explicit.build((None, 2))
    explicit(np.zeros((2, 2), 'float32'), training=True)
    np.testing.assert_allclose(explicit.vmax.numpy(), [16.0 * 0.99] * 2, rtol=1e-6)  # explicit: starts at +-2**i_init


# -- BetaTarget ----------------------------------------------------------------------------------------------------


def test_beta_target_ends_within_5_percent_of_the_target_on_digits():
    """The benchmark's digits MLP (64-32-10, 60 epochs, batch 32): EBOPs end within 5 % of a 5,000 target."""
    data = hgq.datasets.digits()
    keras.utils.set_random_seed(0)
    model = _compile(keras.Sequential([keras.Input((64,)), HDense(32, activation='relu'), HDense(10)]))
    target = hgq.callbacks.BetaTarget(5000.0, beta_init=1e-5)
    history = model.fit(data.x_train, data.y_train, epochs=60, batch_size=32, verbose=0, callbacks=[target])
    logged = history.history['ebops'][-1]
    calibrated = hgq.calibrate(model, data.x_train)
    print(f'\nBetaTarget 5000: logged {logged:.0f}, calibrated {calibrated:.0f}')
    assert abs(logged / 5000.0 - 1) <= 0.05
    assert abs(calibrated / 5000.0 - 1) <= 0.05


# -- settling the bitwidths ------------------------------------------------------------------------------------------


class _Snapshots(keras.callbacks.Callback):
    """``f`` of the activation and of the weight quantizers, and every kernel, at each epoch start and at the end."""

    def __init__(self):
        super().__init__()
        self.act, self.weight, self.kernels = [], [], []

    def _take(self):
        layers = list(h_layers(self.model))
        self.act.append([q.f.numpy().copy() for layer in layers for q in layer.activation_quantizers])
        self.weight.append([q.f.numpy().copy() for layer in layers for q in layer.weight_quantizers])
        self.kernels.append([layer.kernel.numpy().copy() for layer in layers if hasattr(layer, 'kernel')])

    def on_epoch_begin(self, epoch, logs=None):
        self._take()

    def on_train_end(self, logs=None):
        self._take()


def _moved(snapshots):
    """Per epoch: did any of the arrays change?"""
    return [not all(np.array_equal(a, b) for a, b in zip(s0, s1, strict=True)) for s0, s1 in pairwise(snapshots)]


@pytest.mark.parametrize('weights', [False, True], ids=['activations', 'all'])
def test_settle_bits_freezes_bitwidths_for_the_last_epochs_and_restores_the_pace(digits, weights):
    x, y = digits
    model = _mlp(3e-4)
    snapshots = _Snapshots()
    settle = hgq.callbacks.SettleBits(2, weights=weights)
    model.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[settle, snapshots])
    assert _moved(snapshots.act) == [True, True, True, False, False]  # epochs 0-2 learn bits, epochs 3-4 hold them
    assert _moved(snapshots.weight) == [True, True, True, not weights, not weights]
    assert _moved(snapshots.kernels) == [True] * 5  # weights learn throughout
    before = [q.f.numpy().copy() for layer in h_layers(model) for q in layer.quantizers]
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    after = [q.f.numpy() for layer in h_layers(model) for q in layer.quantizers]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # pace restored


def test_settle_bits_and_pace_refuse_bad_values():
    with pytest.raises(ValueError, match='SettleBits: epochs'):
        hgq.callbacks.SettleBits(-1)
    q = ActivationQuantizer()
    q.build((None, 3))
    with pytest.raises(ValueError, match='pace factor'):
        q.set_bits_pace(-1.0)
    q.set_bits_pace(0.5)
    step = q.trainable_weights[1].constraint
    assert step.get_config() == {'scale': BITS_LR_SCALE * 0.5} and q.bits_lr_scale == BITS_LR_SCALE


# -- warming up beta ---------------------------------------------------------------------------------------------


class _Betas(keras.callbacks.Callback):
    """Every H-layer's ``beta`` as used in each epoch (read after the warm-up has set it)."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append([float(layer.beta.numpy()) for layer in h_layers(self.model)])


def test_beta_warmup_raises_each_layers_beta_from_zero_and_restores_it(digits):
    x, y = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), HQuantize(beta=2e-5), HDense(8, activation='relu', beta=1e-5), HDense(10, beta=4e-5)]
    )
    _compile(model)
    betas = _Betas()
    history = model.fit(
        x[:256], y[:256], epochs=4, batch_size=64, verbose=0, callbacks=[hgq.callbacks.BetaWarmup(2), betas]
    )
    targets = np.array([2e-5, 1e-5, 4e-5], 'float32')
    np.testing.assert_allclose(betas.epochs, [0 * targets, 0.5 * targets, targets, targets], rtol=1e-6)
    assert history.history['beta_scale'] == [0.0, 0.5, 1.0, 1.0] and len(history.history['ebops']) == 4
    model.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0, callbacks=[hgq.callbacks.BetaWarmup(5)])
    np.testing.assert_allclose([layer.beta.numpy() for layer in h_layers(model)], targets, rtol=1e-6)  # set back


def test_beta_warmup_keeps_input_bits_before_the_weights_learn(digits):
    """At a large beta, the first epoch without a warm-up cuts the input bits that a warmed-up run still keeps."""
    x, y = digits
    widths = {}
    for warmup in (0, 5):
        model = _mlp(3e-3)
        model.optimizer.learning_rate.assign(1e-2)  # bits move ~4e-2 per step: one epoch is enough to cut some
        callbacks = [hgq.callbacks.BetaWarmup(warmup)] if warmup else []
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=callbacks)
        hgq.calibrate(model, x)
        widths[warmup] = int(model.layers[0].input_bits_exact().sum())
    assert widths[5] > 1.1 * widths[0], widths  # measured: 389 against 329 bits
    with pytest.raises(ValueError, match='BetaWarmup: epochs'):
        hgq.callbacks.BetaWarmup(0)


def test_pruned_elements_convert_bit_exactly(tmp_path):
    """Elements pruned in training although some values would round to one step are exactly 0 in the firmware too."""
    from csim import assert_csim_bit_exact

    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(256, 6)).astype('float32') * np.array([1, 1, 1, 0.7, 0.7, 0.7], 'float32')
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), HQuantize(), HDense(4, activation='relu'), HDense(3)])
    model(x, training=True)  # training sees the ranges: peak 1 (first three inputs) and 0.7 (last three)
    quantize = model.layers[0].input_quantizer
    quantize.f.assign(np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0], 'float32'))  # 0.7 * 2**0 < 1: pruned
    widths = np.sum(quantize.kif(), axis=0)
    assert widths[3:].tolist() == [0, 0, 0] and np.all(widths[:3] > 0)
    assert np.any(np.floor(x[:, 3:] + 0.5) != 0), 'some pruned values would round to one step'
    y = assert_csim_bit_exact(model, x, tmp_path)
    x_cut = x.copy()
    x_cut[:, 3:] = 0.0
    assert np.array_equal(y[: len(x)], model.predict(x_cut, verbose=0))
