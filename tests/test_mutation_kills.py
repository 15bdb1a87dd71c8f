"""Behaviours that mutation testing (scripts/mutate.py, scripts/MUTATION.md) found unpinned by the rest of the suite.

Each test names the rule it pins; together they kill the mutants that survived the module's own tests.
"""

import math
import warnings

import keras
import numpy as np
import pytest

import hgq
from hgq.calibrate import CalibrationError
from hgq.ebops import all_layers, ebops, h_layers, holds_finite_values, layer_ebops
from hgq.layers import HAdd, HDense, HQuantize
from hgq.quantizer import ActivationQuantizer, ScaledStep, WeightQuantizer

# -- hgq.ebops ---------------------------------------------------------------------------------------------------


class _Wrapper(keras.layers.Layer):
    """A plain Keras layer holding a plain Dense and an H-layer."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.plain = keras.layers.Dense(3, name='plain')
        self.inner = HDense(2, name='inner')

    def build(self, input_shape):
        self.plain.build(input_shape)
        self.inner.build((*input_shape[:-1], 3))

    def call(self, x):
        return self.inner(self.plain(x))


class _Outer(keras.layers.Layer):
    """A plain layer that holds its H-layers two levels down, in a dict attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.parts = {'wrapped': _Wrapper(name='wrapper')}

    def build(self, input_shape):
        self.parts['wrapped'].build(input_shape)

    def call(self, x):
        return self.parts['wrapped'](x)


def _wrapped_model():
    return keras.Sequential([keras.Input((4,)), HQuantize(name='hq'), _Outer(name='outer')])


def test_layers_are_found_inside_plain_layers_that_hold_h_layers():
    model = _wrapped_model()
    assert [layer.name for layer in all_layers(model)] == ['hq', 'plain', 'inner']
    assert [layer.name for layer in h_layers(model)] == ['hq', 'inner']
    values = layer_ebops(model)
    assert list(values) == ['inner'] and values['inner'] > 0
    assert ebops(model) == values['inner']


def test_a_plain_layer_without_h_layers_is_listed_itself():
    model = keras.Sequential([keras.Input((4,)), HQuantize(name='hq'), keras.layers.Dense(3, name='plain')])
    assert [layer.name for layer in all_layers(model)] == ['hq', 'plain']


def _dense_model(kernel):
    model = keras.Sequential([keras.Input((2,)), HQuantize(name='hq'), HDense(2, name='dense')])
    dense = model.get_layer('dense')
    dense.kernel_quantizer.f.assign(np.full((2, 2), 3.0, np.float32))
    dense.bias_quantizer.f.assign(np.full((2,), 3.0, np.float32))
    dense.kernel.assign(np.asarray(kernel, np.float32))
    dense.bias.assign(np.zeros(2, np.float32))
    return model


def test_ebops_are_exact_by_default():
    """Weights 0.5 at f = 3: 1 significant bit each (exact), ``msb + 1 + f = 3`` in the training-time estimate."""
    model = _dense_model([[0.5, 0.5], [0.5, -0.5]])
    exact, estimate = layer_ebops(model, exact=True), layer_ebops(model, exact=False)
    assert estimate['dense'] == 3 * exact['dense'] > 0
    assert layer_ebops(model) == exact
    assert ebops(model) == exact['dense'] and ebops(model, exact=False) == estimate['dense']


def test_a_layer_whose_weights_all_round_to_zero_is_listed_with_zero_ebops():
    model = _dense_model(np.zeros((2, 2)))
    assert layer_ebops(model) == {'dense': 0.0}
    assert ebops(model) == 0.0 and isinstance(ebops(model), float)


def test_one_non_finite_weight_makes_the_layer_non_finite():
    model = _dense_model([[0.5, np.nan], [0.5, -0.5]])
    dense = model.get_layer('dense')
    assert not holds_finite_values(dense) and holds_finite_values(model.get_layer('hq'))
    assert math.isnan(layer_ebops(model)['dense'])
    with pytest.warns(RuntimeWarning, match=r"layers \['dense'\]"):
        assert math.isnan(ebops(model))


def test_ebops_of_an_unbuilt_model_names_it():
    model = keras.Sequential([HQuantize(), HDense(2)], name='unbuilt')
    with pytest.raises(ValueError, match="model 'unbuilt' is not built"):
        layer_ebops(model)
    assert hgq.ebops is ebops


# -- hgq.quantizer -----------------------------------------------------------------------------------------------


def test_quantizer_defaults_are_the_documented_ones():
    """The constructor defaults are public API: changing one silently changes every model built without it."""
    activation = ActivationQuantizer().get_config()
    assert {key: activation[key] for key in ACTIVATION_DEFAULTS} == ACTIVATION_DEFAULTS
    weight = WeightQuantizer().get_config()
    assert {key: weight[key] for key in WEIGHT_DEFAULTS} == WEIGHT_DEFAULTS


ACTIVATION_DEFAULTS = dict(
    granularity='element',
    f_init=6.0,
    overflow_mode='WRAP',
    round_mode='RND',
    i_init=None,
    signed=True,
    momentum=0.99,
    channel_axis=-1,
    bits_l1=0.0,
    f_trainable=True,
    bits_lr_scale=4.0,
    bits_decay=1e-8,
)
WEIGHT_DEFAULTS = dict(
    granularity='element',
    f_init=None,
    init_bits=4.0,
    round_mode='RND',
    channel_axis=-1,
    bits_l1=0.0,
    f_trainable=True,
    bits_lr_scale=4.0,
    bits_decay=1e-8,
)


def test_untrained_ranges_hold_four_integer_bits():
    """Before any data: a WRAP range of [-2**4, 2**4], and 4 learned integer bits in SAT mode."""
    wrap = ActivationQuantizer()
    wrap.build((None, 2))
    assert wrap.vmin.numpy().tolist() == [-16.0, -16.0] and wrap.vmax.numpy().tolist() == [16.0, 16.0]
    k, i, _ = wrap.kif()
    assert k.tolist() == [1, 1] and i.tolist() == [5, 5]  # 16 itself needs i = 5
    sat = ActivationQuantizer(overflow_mode='SAT')
    sat.build((None, 2))
    assert sat.i.numpy().tolist() == [4.0, 4.0]


def test_a_never_trained_wrap_quantizer_prunes_nothing_even_with_coarse_steps():
    """``train_peak`` starts huge: with steps of 2**8 a value of 2**19 inside a range of +-2**20 is kept."""
    q = ActivationQuantizer(i_init=20.0, f_init=-8.0)
    x = np.array([[2.0**19, -(2.0**12) * 3, 100.0]], np.float32)
    assert q(x, training=False).numpy().tolist() == [[2.0**19, -(2.0**12) * 3, 0.0]]


@pytest.mark.parametrize('f', [-64.0, -65.0, -100.0])
def test_a_range_set_without_training_prunes_nothing_at_any_step(f):
    """A range from ``set_range`` alone (never trained) keeps a value of ``2**69`` at steps of ``2**64`` and
    coarser (a finite untrained peak of ``2**64`` pruned every element from ``f = -65`` on)."""
    q = ActivationQuantizer(f_init=f)
    q.build((None, 1))
    q.set_range(-(2.0**70), 2.0**70)
    out = q(np.array([[2.0**69]], np.float32), training=False).numpy()
    assert out.tolist() == [[2.0**69 if f > -70 else 0.0]]


def test_sat_integer_bits_are_learned_at_the_bit_pace():
    q = ActivationQuantizer(overflow_mode='SAT')
    q.build((None, 2))
    assert [w.name for w in q.trainable_weights] == ['f', 'f_step', 'i', 'i_step']
    i_step = q.trainable_weights[3]
    assert isinstance(i_step.constraint, ScaledStep) and i_step.constraint.variable is q.i
    assert i_step.constraint.scale == 4.0


def test_no_bits_penalty_no_loss_term():
    """``bits_l1=0`` adds no loss at all (not a zero one): models without the penalty keep their loss list empty."""
    x = np.ones((2, 3), np.float32)
    plain = {'overflow_mode': 'SAT', 'bits_decay': 0.0}  # the default pull of the bitwidths is a loss term too
    for q in (ActivationQuantizer(**plain), ActivationQuantizer(**plain, bits_l1=1e-3)):
        q(x, training=True)
        assert len(q.losses) == (1 if q.bits_l1 else 0)


def test_quantizer_variables_keep_their_names():
    """The names users see in ``layer.weights`` (and in saved weight listings)."""
    wrap, sat, weight = ActivationQuantizer(), ActivationQuantizer(overflow_mode='SAT'), WeightQuantizer()
    wrap.build((None, 2))
    sat.build((None, 2))
    weight.build((2,))
    wrap_names = ['f', 'f_step', 'vmin', 'vmax', 'calibrated', 'range_started', 'train_peak']
    assert [w.name for w in wrap.weights] == wrap_names
    assert [w.name for w in sat.weights] == ['f', 'f_step', 'i', 'i_step']
    assert [w.name for w in weight.weights] == ['f', 'f_step']


def test_only_f_is_trainable_in_wrap_mode():
    q = ActivationQuantizer()
    q.build((None, 2))
    assert [w.name for w in q.trainable_weights] == ['f', 'f_step']


@pytest.mark.parametrize('momentum', [1.0, -0.5, 1.5])
def test_momentum_outside_zero_to_one_is_refused(momentum):
    with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\)'):
        ActivationQuantizer(momentum=momentum)
    assert ActivationQuantizer(momentum=0.0).momentum == 0.0


def test_quantizers_save_under_the_hgq_package_name():
    """Saved models name the classes ``hgq>...``: a model saved by an earlier version must still load."""
    for cls in (ActivationQuantizer, WeightQuantizer):
        assert keras.saving.get_registered_name(cls) == f'hgq>{cls.__name__}'


def test_training_peak_is_the_largest_magnitude_so_an_element_with_a_large_value_is_not_pruned():
    """Values in ``[-0.1, 3]`` at ``f = 0``: the peak is 3, one step or more, so the element keeps its values."""
    q = ActivationQuantizer(granularity='tensor', f_init=0.0)
    q(np.array([[-0.1, 3.0]], np.float32), training=True)
    assert q.train_peak.numpy().tolist() == [3.0]
    assert q(np.array([[2.0, -0.3]], np.float32), training=False).numpy().tolist() == [[2.0, 0.0]]


@pytest.mark.parametrize('batch', [[[-3.0, -5.0]], [[0.0, -2.0]], [[4.0, 0.5]]])
def test_the_first_training_batch_sets_the_range_exactly(batch):
    """Without ``i_init`` the range starts at the first batch's own range, whatever its signs."""
    q = ActivationQuantizer(granularity='tensor')
    x = np.array(batch, np.float32)
    q(x, training=True)
    assert q.vmin.numpy().tolist() == [x.min()] and q.vmax.numpy().tolist() == [x.max()]


@pytest.mark.parametrize(('value', 'f'), [(1.0, 3), (0.3, 5), (4.0, 1)])
def test_initial_weight_bits_keep_init_bits_significant_bits(value, f):
    """``f = ceil(init_bits - 1 - log2(rms))``: a weight of the typical magnitude keeps ``init_bits`` (4) bits."""
    q = WeightQuantizer()
    q.build((4,))
    q.fit_initial_bits(np.full(4, value, np.float32))
    assert q.f.numpy().tolist() == [float(f)] * 4


@pytest.mark.parametrize('scale', [0.0, -1.0, np.inf, np.nan])
def test_bits_lr_scale_must_be_finite_and_positive(scale):
    with pytest.raises(ValueError, match='bits_lr_scale must be a finite number > 0'):
        ActivationQuantizer(bits_lr_scale=scale)


def test_no_step_scaling_for_frozen_bits():
    q = ActivationQuantizer(f_trainable=False)
    q.build((None, 2))
    assert q.f.constraint is None and [w.name for w in q.weights if w.trainable] == []
    q = ActivationQuantizer(bits_lr_scale=2.0)
    q.build((None, 2))
    step = q.trainable_weights[1].constraint
    assert isinstance(step, ScaledStep) and step.variable is q.f and step.scale == 2.0


def test_wrap_training_forward_rounds_to_f_bits():
    q = ActivationQuantizer(f_init=2.0)
    out = q(np.array([[0.3, -1.1, 2.6]], np.float32), training=True)
    assert out.numpy().tolist() == [[0.25, -1.0, 2.5]]


# -- hgq.calibrate -----------------------------------------------------------------------------------------------


def test_calibrating_a_model_without_wrap_quantizers_returns_its_ebops():
    sat = {'overflow_mode': 'SAT'}
    model = keras.Sequential([keras.Input((3,)), HQuantize(input_quantizer=sat), HDense(2, input_quantizer=sat)])
    before = [w.numpy().copy() for w in model.weights]
    result = hgq.calibrate(model, np.ones((4, 3), np.float32))
    assert isinstance(result, float) and result == ebops(model) > 0
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights, strict=True))


def test_calibration_accepts_values_up_to_two_to_the_nineteen():
    """Documented limit: values inside ``+-2**19`` calibrate, values beyond are refused with the limit named."""
    model = keras.Sequential([keras.Input((2,)), HQuantize(input_quantizer={'f_init': 0.0}, name='hq')])
    inside = np.array([[3.0e5, -1.0], [2.0, -4.0e5]], np.float32)
    assert hgq.calibrate(model, inside) == 0.0
    k, i, _ = model.get_layer('hq').input_quantizer.kif()
    assert k.tolist() == [0, 1] and i.tolist() == [19, 19]
    with pytest.raises(CalibrationError, match=r'beyond \+-2\*\*19'):
        hgq.calibrate(model, np.array([[6.0e5, 0.0]], np.float32))


def test_calibration_batches_of_one_sample_are_allowed_and_zero_is_refused(capsys):
    model = keras.Sequential([keras.Input((2,)), HQuantize(name='hq')])
    data = np.array([[1.5, -3.0], [0.25, 2.0], [-1.0, 0.5]], np.float32)
    hgq.calibrate(model, data, batch_size=1)
    assert capsys.readouterr().out == ''  # no progress bar unless verbose=1
    quantizer = model.get_layer('hq').input_quantizer
    assert quantizer.vmin.numpy().tolist() == [-1.0, -3.0] and quantizer.vmax.numpy().tolist() == [1.5, 2.0]
    with pytest.raises(CalibrationError, match='batch_size must be a positive integer, got 0'):
        hgq.calibrate(model, data, batch_size=0)
    hgq.calibrate(model, data[:1])  # one sample is data enough
    assert quantizer.vmin.numpy().tolist() == [1.5, -3.0] and quantizer.vmax.numpy().tolist() == [1.5, -3.0]


def test_a_two_input_model_calibrates_each_input_from_its_own_data():
    a, b = keras.Input((2,)), keras.Input((2,))
    qa, qb = HQuantize(name='qa'), HQuantize(name='qb')
    model = keras.Model([a, b], HAdd()([qa(a), qb(b)]))
    with pytest.raises(CalibrationError, match=r'different numbers of samples \[3, 2\]'):
        hgq.calibrate(model, [np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)])
    hgq.calibrate(model, [np.array([[1.0, -2.0]], np.float32), np.array([[0.5, 3.0]], np.float32)])
    assert qa.input_quantizer.vmax.numpy().tolist() == [1.0, -2.0]
    assert qb.input_quantizer.vmax.numpy().tolist() == [0.5, 3.0]


def test_calibration_observes_in_inference_mode_and_keeps_the_pruned_elements():
    """The training peak decides which elements are pruned; calibration must leave it (and the pruning) alone."""
    model = keras.Sequential([keras.Input((2,)), HQuantize(name='hq')])
    quantizer = model.get_layer('hq').input_quantizer
    x = np.array([[0.001, 3.0]], np.float32)  # at f = 6 the first element is below one step: pruned
    quantizer(x, training=True)
    peak = quantizer.train_peak.numpy().copy()
    hgq.calibrate(model, x)
    assert np.array_equal(quantizer.train_peak.numpy(), peak)
    assert model.predict(x, verbose=0).tolist() == [[0.0, 3.0]]


# -- hgq.quantizer: pruned elements, tracked sign and integer bits, initial weight bits -----------------------------


def _trained_twice(x, f_init):
    """Two training steps on ``x``: the first starts the tracked range, the second is pruned on it."""
    q = ActivationQuantizer(f_init=f_init)
    q(np.asarray(x, np.float32), training=True)
    out = q(np.asarray(x, np.float32), training=True)
    return q, out.numpy()


def test_an_element_below_one_step_is_exactly_zero_in_training_and_one_step_is_kept():
    """Peak ``0.2`` at ``f = 2`` (``0.2 * 4 < 1``): pruned, 0 although 0.2 rounds to 0.25; a peak of exactly one step
    (``0.25``) is kept; ``0.6`` at ``f = 3`` rounds to ``5/8``."""
    _, out = _trained_twice([[0.2, 0.25, 1.1]], 2.0)
    assert out.tolist() == [[0.0, 0.25, 1.0]]
    _, out = _trained_twice([[0.6, 0.3]], 3.0)
    assert out.tolist() == [[0.625, 0.25]]


def test_a_pruned_element_has_width_zero_and_outputs_zero_for_any_value():
    """Pruned: ``k = 0, i = -f`` (width 0, no bits), and 0 at inference even for values far outside its range."""
    q, _ = _trained_twice([[0.001, 3.0]], 6.0)
    k, i, f = q.kif()
    assert k.tolist() == [0, 0] and i.tolist() == [-6, 2] and f.tolist() == [6, 6]  # 3.0 alone: unsigned, 2 bits
    assert q.bits().numpy().tolist() == [0.0, 8.0]
    assert q(np.array([[-5.0, 1.0]], np.float32), training=False).numpy().tolist() == [[0.0, 1.0]]


def test_a_pruned_element_gets_the_gradient_of_f_it_would_get_unpruned():
    """``d out / d f = -ln2 (q - x)`` also where the element is pruned (so that it can grow back)."""
    import tensorflow as tf

    x = np.array([[0.1, 0.3]], np.float32)  # at f = 2 the first element is pruned (0.1 * 4 < 1)
    q = ActivationQuantizer(f_init=2.0)
    q.build((None, 2))
    with tf.GradientTape() as tape:
        out = q(x, training=True)
    # f's gradient, wherever the quantizer routes it (to f itself, or to a step variable of f's shape)
    grads = tape.gradient(out, q.trainable_weights)
    grad = sum(g.numpy() for g in grads if g is not None)
    rounded = np.floor(x * 4 + 0.5) / 4
    assert out.numpy().tolist() == [[0.0, 0.25]]
    np.testing.assert_allclose(grad, (-np.log(2) * (rounded - x))[0], rtol=1e-6)
    assert grad[0] != 0


@pytest.mark.parametrize(('vmin', 'i'), [(-3.0, 2), (-0.25, -2), (-4.0, 2), (-0.3, -1)])
def test_the_integer_bits_of_a_negative_range_hold_its_minimum(vmin, i):
    """Signed ``i`` holds ``[-2**i, 2**i)``: the fewest integer bits that hold the range ``[vmin, 0]``."""
    q = ActivationQuantizer(f_init=4.0, i_init=0.0)
    q.build((None, 1))
    q.set_range(vmin, 0.0)
    k, got, _ = q.kif()
    assert k.tolist() == [1] and got.tolist() == [i]
    assert q(np.array([[vmin]], np.float32)).numpy().tolist() == [[np.floor(vmin * 16 + 0.5) / 16]]


@pytest.mark.parametrize('f', [6.0, 100.0])
def test_a_range_of_exactly_zero_needs_no_bits_whatever_f(f):
    q = ActivationQuantizer(i_init=0.0)
    q.build((None, 1))
    q.f.assign([f])
    q.set_range(0.0, 0.0)
    k, i, f_int = q.kif()
    assert k.tolist() == [0] and (k + i + f_int).tolist() == [0]


def test_quantizers_apply_to_symbolic_tensors():
    assert ActivationQuantizer().compute_output_shape((None, 3)) == (None, 3)
    out = ActivationQuantizer()(keras.Input((3, 2)))
    assert tuple(out.shape) == (None, 3, 2)


def test_the_calibrated_flag_is_set_by_calibration_only_and_cleared_by_training():
    model = keras.Sequential([keras.Input((2,)), HQuantize(name='hq')])
    quantizer = model.get_layer('hq').input_quantizer
    assert float(quantizer.calibrated.numpy()) == 0.0
    hgq.calibrate(model, np.ones((2, 2), np.float32))
    assert float(quantizer.calibrated.numpy()) == 1.0
    quantizer(np.ones((1, 2), np.float32), training=True)
    assert float(quantizer.calibrated.numpy()) == 0.0


def test_no_bits_penalty_no_weight_loss_term():
    """``bits_l1=0`` adds no loss term (not a zero one): the penalty is one more loss only when asked for."""
    counts = []
    for q in (WeightQuantizer(f_init=2.0, bits_decay=0.0), WeightQuantizer(f_init=2.0, bits_decay=0.0, bits_l1=1e-3)):
        q.build((3,))
        q(np.ones(3, np.float32), training=True)
        counts.append(len(q.losses))
    assert counts[1] == counts[0] + 1


def test_scaled_step_config_names_its_scale():
    step = ScaledStep(keras.Variable(1.0), 4.0)
    assert step.get_config() == {'scale': 4.0}
    step.set_scale(0.5)
    assert step.get_config() == {'scale': 0.5}


def test_a_bit_pace_below_one_is_allowed():
    assert ActivationQuantizer(bits_lr_scale=0.5).bits_lr_scale == 0.5


def test_initial_weight_bits_use_the_rms_of_the_whole_tensor_per_element_and_per_tensor():
    """``element``/``tensor``: one typical magnitude for the tensor (rms 0.8660 -> ``f = ceil(3.21) = 4`` for all)."""
    weights = np.array([1.0, 1.0, 1.0, 0.01], np.float32)
    for granularity, shape in (('element', [4]), ('tensor', [1])):
        q = WeightQuantizer(granularity=granularity)
        q.build((4,))
        q.fit_initial_bits(weights)
        assert q.f.numpy().tolist() == [4.0] * shape[0]


@pytest.mark.parametrize('channel_axis', [-1, 0])
def test_initial_weight_bits_per_channel_use_each_channels_rms(channel_axis):
    """Channel rms 1 -> ``f = 3``; rms 0.25 -> ``f = 5``; along the channel axis, whichever it is."""
    weights = np.array([[1.0, 0.25], [-1.0, 0.25], [1.0, -0.25]], np.float32)  # channels along the last axis
    if channel_axis == 0:
        weights = weights.T
    q = WeightQuantizer(granularity='channel', channel_axis=channel_axis)
    q.build(weights.shape)
    q.fit_initial_bits(weights)
    assert q.f.numpy().ravel().tolist() == [3.0, 5.0]


def test_all_zero_weights_get_the_bits_of_weights_of_magnitude_one():
    q = WeightQuantizer()
    q.build((3,))
    q.fit_initial_bits(np.zeros(3, np.float32))
    assert q.f.numpy().tolist() == [3.0, 3.0, 3.0]  # init_bits - 1, finite


class Subclassed(keras.Model):
    """A subclassed model (its name must not start with '_': TensorFlow refuses such scope names)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.quantize = HQuantize()
        self.dense = HDense(5)

    def call(self, x, training=None):
        return self.dense(self.quantize(x, training=training), training=training)


def test_a_subclassed_model_fits_its_initial_weight_bits_to_its_kernel():
    """Keras builds a subclassed model by tracing it and initializes the variables afterwards: ``f`` must still be
    fitted to the kernel it ends up with (Glorot 13x5: rms 0.35, ``f = 5``), not left at ``init_bits``."""
    keras.utils.set_random_seed(0)
    model = Subclassed()
    model(np.zeros((2, 13), np.float32))
    quantizer, kernel = model.dense.kernel_quantizer, model.dense.kernel.numpy()
    rms = np.sqrt(np.mean(np.square(kernel.astype(np.float64))))
    want = np.ceil(quantizer.init_bits - 1 - np.log2(rms))
    assert want == 5.0 and quantizer.f.numpy().tolist() == np.full((13, 5), want).tolist()


# -- hgq.calibrate: data checks, progress, limits, unseen quantizers, backends ----------------------------------


def _one_input_model():
    return keras.Sequential([keras.Input((2,)), HQuantize(name='hq')])


@pytest.mark.parametrize(
    ('data', 'message'),
    [
        (np.float32(1.0), r'expected a non-empty array of samples, got shape \(\)'),
        (np.zeros((0, 2), np.float32), r'expected a non-empty array of samples, got shape \(0, 2\)'),
        (np.array([[1.0, np.nan], [2.0, 3.0]], np.float32), 'holds 1 NaN or infinite values'),
        ([np.ones((2, 2), np.float32)] * 2, 'has 1 inputs; the calibration data hold 2 arrays'),
    ],
)
def test_calibration_data_are_checked_before_any_work(data, message):
    with pytest.raises(CalibrationError, match=message):
        hgq.calibrate(_one_input_model(), data)


def test_calibration_shows_progress_when_asked(capsys):
    hgq.calibrate(_one_input_model(), np.ones((3, 2), np.float32), batch_size=2, verbose=1)
    assert '3/3' in capsys.readouterr().out


def test_calibration_refuses_two_to_the_nineteen_itself():
    """Values must stay strictly inside ``+-2**19``."""
    model = keras.Sequential([keras.Input((2,)), HQuantize(input_quantizer={'f_init': 0.0})])
    hgq.calibrate(model, np.array([[2.0**19 - 0.5, -(2.0**19) + 0.5]], np.float32))
    for value in (2.0**19, -(2.0**19)):
        with pytest.raises(CalibrationError, match=r'1 values beyond \+-2\*\*19'):
            hgq.calibrate(model, np.array([[value, 0.0]], np.float32))


def test_one_value_is_data_enough_and_a_quantizer_that_sees_none_is_named():
    model = keras.Sequential([keras.Input((1,)), HQuantize(name='hq')])
    hgq.calibrate(model, np.array([[0.5]], np.float32))
    assert model.get_layer('hq').input_quantizer.vmax.numpy().tolist() == [0.5]

    class Unused(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.used, self.spare = HQuantize(name='used'), HQuantize(name='spare')

        def call(self, x):
            return self.used(x)

    model = Unused()
    model(np.ones((1, 2), np.float32))
    model.spare.build((None, 2))
    with pytest.raises(CalibrationError, match=r"quantizers \['spare_iq'\] saw no data"):
        hgq.calibrate(model, np.ones((1, 2), np.float32))


def test_a_subclassed_model_calibrates():
    model = Subclassed()
    model(np.zeros((1, 13), np.float32))
    data = np.linspace(-2.0, 3.0, 26, dtype=np.float32).reshape(2, 13)
    assert hgq.calibrate(model, data) > 0
    assert np.array_equal(model.quantize.input_quantizer.vmax.numpy(), data.max(axis=0))


def test_outside_tensorflow_the_observation_pass_is_the_eager_model_call(monkeypatch):
    from hgq.calibrate import _forward

    model = _one_input_model()
    x = np.array([[0.3, -1.2]], np.float32)
    monkeypatch.setattr(keras.backend, 'backend', lambda: 'jax')
    forward = _forward(model, [x])
    monkeypatch.undo()
    assert np.array_equal(np.asarray(forward([x])), model(x, training=False).numpy())


def test_under_tensorflow_the_observation_pass_is_compiled_once_for_every_batch_size():
    import tensorflow as tf

    from hgq.calibrate import _forward

    if keras.backend.backend() != 'tensorflow':
        pytest.skip('the compiled pass is TensorFlow-only')
    model = _one_input_model()
    x = np.array([[0.3, -1.2], [2.0, 0.1], [-0.7, 0.4]], np.float32)
    forward = _forward(model, [x])
    assert isinstance(forward, tf.types.experimental.PolymorphicFunction)
    assert np.array_equal(np.asarray(forward([x])), model(x, training=False).numpy())
    assert np.array_equal(np.asarray(forward([x[:1]])), model(x[:1], training=False).numpy())
    assert forward.experimental_get_tracing_count() == 1


@pytest.mark.parametrize('scale', [-1.0, np.inf, np.nan])
def test_a_step_scale_must_be_finite_and_not_negative(scale):
    step = ScaledStep(keras.Variable(1.0), 4.0)
    with pytest.raises(ValueError, match='the step scale must be a finite number >= 0'):
        step.set_scale(scale)


def test_a_step_scale_of_zero_or_below_one_is_allowed():
    """0 freezes the bitwidths (SettleBits), a fraction slows them."""
    step = ScaledStep(keras.Variable(1.0), 4.0)
    for scale in (0.0, 0.5):
        step.set_scale(scale)
        assert step.get_config() == {'scale': scale}


def test_bitwidths_move_bits_lr_scale_times_the_optimizer_step():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)

    def f_change(scale, pace=None):
        quantizer = {'bits_lr_scale': scale, 'f_init': 2.0, 'i_init': 3.0}
        model = keras.Sequential([keras.Input((3,)), HQuantize(input_quantizer=quantizer, name='hq')])
        model.compile(keras.optimizers.SGD(0.01), 'mse')
        q = model.get_layer('hq').input_quantizer
        if pace is not None:
            q.set_bits_pace(pace)
        before = q.f.numpy().copy()
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        return q.f.numpy() - before

    once, scaled = f_change(1.0), f_change(4.0)
    assert np.all(once != 0)
    np.testing.assert_allclose(scaled, 4.0 * once, rtol=1e-3)  # f near 2 holds steps to 2.4e-7 (float32)
    # set_bits_pace multiplies the configured pace: 4 * 0.5 = 2 times the optimizer step; 0 holds the bits
    np.testing.assert_allclose(f_change(4.0, pace=0.5), 2.0 * once, rtol=1e-3)
    assert np.all(f_change(4.0, pace=0.0) == 0)
    with pytest.raises(ValueError, match='the bit pace factor must be a finite number >= 0'):
        ActivationQuantizer().set_bits_pace(-1.0)


def test_a_bit_pace_that_is_applied_warns_of_nothing():
    """The bit pace is applied on every backend (step variables), so neither a pace other than 1
    (``bits_lr_scale=4``, building the bitwidth variables) nor ``set_bits_pace`` warns that it is ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for q in (ActivationQuantizer(bits_lr_scale=4.0), WeightQuantizer(bits_lr_scale=4.0)):
            q.build((None, 3) if isinstance(q, ActivationQuantizer) else (3, 2))
            q.set_bits_pace(0.0)
            q.set_bits_pace(0.5)


def test_the_bits_decay_loss_pulls_every_positive_learned_bitwidth():
    """``bits_decay * sum(max(b, 0))`` over ``f`` and (SAT) ``i``, in training only: f = -1 and 3, i = 3 and 3."""
    x = np.ones((2, 2), np.float32)

    def losses(decay, training=True):
        q = ActivationQuantizer(overflow_mode='SAT', i_init=3.0, bits_decay=decay)
        q.build((None, 2))
        q.f.assign([-1.0, 3.0])
        q(x, training=training)
        return [float(loss) for loss in q.losses]

    assert losses(0.0) == [] and losses(1e-3, training=False) == []
    np.testing.assert_allclose(losses(1e-3), [1e-3 * 9.0], rtol=1e-6)


@pytest.mark.parametrize('decay', [-1e-8, np.inf, np.nan])
def test_bits_decay_must_be_finite_and_not_negative(decay):
    with pytest.raises(ValueError, match='bits_decay must be a finite number >= 0'):
        ActivationQuantizer(bits_decay=decay)
    assert WeightQuantizer(bits_decay=0.0).bits_decay == 0.0
