"""Rules pinned after mutation testing of ``exactness``, ``callbacks`` and ``layers`` (scripts/MUTATION.md).

Each test states a documented rule with numbers worked out by hand from it; a mutant of the rule changes them.
"""

import json
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from hgq.calibrate import calibrate as hgq_calibrate
from hgq.callbacks import (
    BetaSchedule,
    BetaTarget,
    BetaWarmup,
    ParetoFront,
    ParetoPoint,
    SettleBits,
    beta_update,
    log_ebops,
    non_dominated,
    read_front,
)
from hgq.ebops import ebops, h_layers
from hgq.exactness import check_float32_exact, float32_problems
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
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
)
from hgq.layers.base import serialize_quantizer
from hgq.lut import scalar_kif
from hgq.quantizer import ActivationQuantizer, WeightQuantizer


# -- exactness: the largest partial sum of each accumulator, in steps of its finest term, against 2**24 -------------
def _sat(i, f, signed=True):
    """A SAT input quantizer of fixed integer and fractional bits (``k = signed``)."""
    return {'overflow_mode': 'SAT', 'i_init': i, 'f_init': f, 'signed': signed}


def _set_format(quantizer, i, f):
    """Per-element integer and fractional bits of a SAT quantizer (broadcast to its variables)."""
    quantizer.i.assign(np.broadcast_to(np.asarray(i, 'float32'), quantizer.i.shape))
    quantizer.f.assign(np.broadcast_to(np.asarray(f, 'float32'), quantizer.f.shape))


def _needed(model):
    """The significant bits each problem line reports, in order (an empty list for an exact model)."""
    problems = float32_problems(model)
    counts = []
    for line in problems:
        found = re.search(r'needs up to (\d+) significant bits|formats of up to (\d+) significant bits', line)
        assert found, line
        counts.append(int(found.group(1) or found.group(2)))
    return counts


def _dense(inputs, i, f, kernel, bias=None, kernel_f=2, bias_f=12, signed=True):
    layer = HDense(
        np.shape(kernel)[1],
        use_bias=bias is not None,
        input_quantizer=_sat(4, 4, signed),
        kernel_quantizer={'f_init': kernel_f},
        bias_quantizer={'f_init': bias_f},
    )
    model = keras.Sequential([keras.Input((inputs,)), layer])
    _set_format(layer.input_quantizer, i, f)
    layer.kernel.assign(np.asarray(kernel, 'float32'))
    if bias is not None:
        layer.bias.assign(np.asarray(bias, 'float32'))
    return model


def test_a_dense_sum_is_judged_by_its_finest_input_channel():
    # 3 inputs of magnitude 2**13, weights +-1: the sum reaches 3 * 2**13 in steps of 2**-max(f) = 2**-10.
    model = _dense(3, 13, [10, 7, 7], [[1.0], [-1.0], [1.0]])
    assert _needed(model) == [25]  # 3 * 2**23 = 2**24.58
    assert _needed(_dense(3, 13, [9, 7, 7], [[1.0], [-1.0], [1.0]])) == []  # 3 * 2**22 fits 24 bits


def test_a_dense_sum_adds_the_weights_fractional_bits_and_takes_the_finest_product():
    # Weights 0.25 (f = 2) and 1 (f = 0) on inputs of f = 10: finest product step 2**-12; sum up to 2**13 * 2.25.
    assert _needed(_dense(3, 13, 10, [[0.25], [1.0], [1.0]])) == [27]  # 18432 * 2**12 = 2**26.17
    assert _needed(_dense(3, 13, 10, [[0.25], [0.25], [0.25]])) == [25]  # 6144 * 2**12 = 2**24.58


def test_a_dense_bias_adds_its_magnitude_and_its_finer_step():
    # Column 1: products up to 2**11 + 2**2 plus a bias of 2**11 + 2**-12 reach 4100 in steps of 2**-12 (25 bits);
    # column 0 (products up to 2**2, no bias) is exact.
    model = _dense(2, [11, 2], [0, 2], [[0.0, 1.0], [1.0, 1.0]], bias=[0.0, 2048.000244140625])
    assert _needed(model) == [25]
    # A bias step finer than the products' (2**-12 against 2**-9) sets the step of the whole sum.
    model = _dense(3, 13, [9, 7, 7], [[1.0], [-1.0], [1.0]], bias=[2.0**-12])
    assert _needed(model) == [27]  # (3 * 2**13 + 2**-12) * 2**12 = 2**26.58


def test_a_dense_input_element_of_width_zero_adds_nothing():
    # Unsigned, i = 20, f = -20: k + i + f = 0, an element that is always zero, whatever its (large) weight.
    model = _dense(2, [20, 4], [-20, 10], [[2.0**14], [1.0]], signed=False)
    assert _needed(model) == []  # 2**4 in steps of 2**-10
    _set_format(model.layers[-1].input_quantizer, [20, 4], [-19, 10])  # one bit: 2**20 * 2**14 in steps of 2**-10
    assert _needed(model) == [45]  # (2**34 + 2**4) * 2**10 = 2**44 + 2**14


def test_a_sum_below_one_in_fine_steps_is_counted_in_steps():
    # Inputs up to 2**-4 in steps of 2**-20 times a weight of 21 significant bits (0.5 + 2**-20): the sum stays
    # below 1 but needs 36 bits ((2**-5 + 2**-24) * 2**40 = 2**35 + 2**16).
    assert _needed(_dense(1, -4, 20, [[0.5 + 2.0**-20]], kernel_f=20)) == [36]


def test_a_convolution_takes_the_finest_input_step_of_each_input_channel():
    layer = HConv1D(1, 2, use_bias=False, input_quantizer=_sat(4, 4), kernel_quantizer={'f_init': 2})
    model = keras.Sequential([keras.Input((4, 2)), layer])
    # Channel 0 has f = 10 at one position only; channel 1 f = 6; magnitudes 2**13; weights 1 and 0.5 (f = 1).
    f = np.array([[10, 6], [6, 6], [6, 6], [6, 6]])
    _set_format(layer.input_quantizer, 13, f)
    layer.kernel.assign(np.array([[[1.0], [0.5]], [[1.0], [0.5]]], 'float32'))
    # Window of 2 positions x 2 channels: bound 2**13 * 3, finest step max(10 + 0, 6 + 1) = 10.
    assert _needed(model) == [25]  # 24576 * 2**10 = 2**24.58


def test_activation_formats_wider_than_float32_are_named_with_their_widest_format():
    layer = HQuantize(input_quantizer=_sat(4, 4, signed=False))
    model = keras.Sequential([keras.Input((4,)), layer])
    # 24 bits; 0 bits (k + i + f = 0: always zero, whatever f); two ordinary ones.
    _set_format(layer.input_quantizer, [10, -130, 2, 0], [14, 130, 2, 0])
    assert _needed(model) == []
    _set_format(layer.input_quantizer, [10, -130, 12, 0], [15, 130, 15, 0])  # 25 and 27 bits
    assert _needed(model) == [27]
    # One bit (k + i + f = 1) in a step of 2**-131, below float32's normal range: refused, though narrow.
    _set_format(layer.input_quantizer, [0, -130, 2, 0], [0, 131, 2, 0])
    assert _needed(model) == [1]


def test_batch_normalization_needs_the_scaled_input_plus_the_offset():
    layer = HBatchNormalization(
        input_quantizer=_sat(4, 4), scale_quantizer={'f_init': 2}, offset_quantizer={'f_init': 12}
    )
    model = keras.Sequential([keras.Input((2,)), layer])
    _set_format(layer.input_quantizer, 13, [9, 6])
    layer.gamma.assign(np.array([1.5, 1.0], 'float32'))  # scale 1.5 / sqrt(1 + 1e-3) quantized to 1.5 (f = 1)
    assert np.array_equal(np.asarray(layer.qscale), [1.5, 1.0])
    # Channel 0: 2**13 * 1.5 in steps of 2**-(9 + 1), 12288 * 2**10 = 2**23.58; channel 1: 2**13 at f = 6.
    assert _needed(model) == []
    layer.offset.assign(np.array([0.0, 2.0**-12], 'float32'))  # channel 1: a finer offset step, 2**-12
    assert _needed(model) == [26]  # (2**13 + 2**-12) * 2**12 = 2**25 + 1
    layer.offset.assign(np.array([4096.0, 0.0], 'float32'))  # channel 0: 12288 + 4096 = 2**14 at f = 10
    assert _needed(model) == []  # 2**24 exactly: exact
    layer.offset.assign(np.array([4096.5, 0.0], 'float32'))
    assert _needed(model) == [25]


def _merge_model(layer, shape, formats):
    inputs = [keras.Input(shape) for _ in formats]
    model = keras.Model(inputs, layer(inputs))
    for quantizer, (i, f) in zip(layer.activation_quantizers, formats, strict=True):
        _set_format(quantizer, i, f)
    return model


def test_a_product_adds_the_magnitudes_and_the_steps_of_its_factors():
    model = _merge_model(HMultiply(input_quantizer=_sat(4, 4)), (2,), [(8, [8, 2]), (3, [6, 2])])
    assert _needed(model) == [25]  # 2**11 in steps of 2**-14


def test_a_sum_adds_the_magnitudes_and_takes_the_finer_step():
    for layer in (HAdd(input_quantizer=_sat(4, 4)), HSubtract(input_quantizer=_sat(4, 4))):
        model = _merge_model(layer, (2,), [(10, [14, 0]), (9, [10, 0])])
        assert _needed(model) == [25]  # (2**10 + 2**9) * 2**14 = 2**24.58
    # Steps are taken per element: the fine step of each input sits on an element where the sum is small.
    model = _merge_model(HAdd(input_quantizer=_sat(4, 4)), (2,), [([10, 2], [0, 14]), ([9, 2], [10, 0])])
    assert _needed(model) == []  # (2**10 + 2**9) * 2**10 and 8 * 2**14


def test_average_pooling_sums_its_window_at_the_largest_magnitude_and_finest_step():
    layer = HAveragePooling1D(4, input_quantizer=_sat(4, 4))
    model = keras.Sequential([keras.Input((8, 1)), layer])
    _set_format(
        layer.input_quantizer, [[10], [2], [2], [2], [2], [2], [2], [2]], [[1], [1], [13], [1], [1], [1], [1], [1]]
    )
    assert _needed(model) == [25]  # 4 * 2**10 in steps of 2**-13
    maximum = HMaxPooling1D(4, input_quantizer=_sat(4, 4))
    model = keras.Sequential([keras.Input((8, 1)), maximum])
    _set_format(maximum.input_quantizer, 10, 14)
    assert _needed(model) == []  # a maximum adds nothing


def test_global_average_pooling_sums_every_position():
    layer = HGlobalAveragePooling2D(input_quantizer=_sat(4, 4))
    model = keras.Sequential([keras.Input((2, 4, 1)), layer])
    _set_format(layer.input_quantizer, 10, 12)
    assert _needed(model) == [25]  # 8 positions * 2**10 in steps of 2**-12 = 2**25
    _set_format(layer.input_quantizer, 10, 11)
    assert _needed(model) == []


def test_an_unbuilt_model_has_no_float32_problems():
    model = keras.Sequential([HQuantize(), HDense(2)])
    assert float32_problems(model) == []
    check_float32_exact(model)


def test_check_float32_exact_names_every_problem():
    model = _dense(3, 13, [10, 7, 7], [[1.0], [-1.0], [1.0]])
    with pytest.raises(ValueError, match=r'needs up to 25 significant bits'):
        check_float32_exact(model)


# -- callbacks: the controller's formula, its defaults and limits; schedules; warm-up; settle; driven by hand -------
def _tiny_model():
    return keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])


def _layer_betas(model):
    return [float(keras.ops.convert_to_numpy(layer.beta)) for layer in h_layers(model)]


def test_log_ebops_without_logs_returns_the_exact_ebops():
    model = _tiny_model()
    assert log_ebops(model, None) == ebops(model) > 0


def test_beta_update_is_the_documented_pi_step_with_its_defaults():
    # Stuck at twice the target: log(beta) grows by rate * log 2 (rate 0.2, under the 20 % limit).
    assert beta_update(1e-6, 2000.0, 2000.0, 1000.0) == pytest.approx(1e-6 * 2**0.2, rel=1e-12)
    # Stuck at half the target: the rate term is RECOVERY (4) times stronger, then limited to a factor 1.2.
    assert beta_update(1e-6, 500.0, 500.0, 1000.0, max_factor=4.0) == pytest.approx(1e-6 * 0.5**0.8, rel=1e-12)
    assert beta_update(1e-6, 500.0, 500.0, 1000.0) == pytest.approx(1e-6 / 1.2, rel=1e-12)
    # Falling from 4x to 2x: damping log(2) - log(4) plus 0.2 * log 2.
    assert beta_update(1e-6, 2000.0, 4000.0, 1000.0, max_factor=4.0) == pytest.approx(1e-6 * 2**-0.8, rel=1e-12)
    # The gain scales the whole step.
    assert beta_update(1e-6, 2000.0, 2000.0, 1000.0, gain=0.5) == pytest.approx(1e-6 * 2**0.1, rel=1e-12)
    # Far off: one step is at most the default factor 1.2 either way; beta stays in [1e-12, 1].
    assert beta_update(1e-6, 1e6, 1e6, 1000.0) == pytest.approx(1.2e-6, rel=1e-12)
    assert beta_update(1e-6, 1.0, 1.0, 1000.0) == pytest.approx(1e-6 / 1.2, rel=1e-12)
    assert beta_update(0.9, 1e6, 1e6, 1000.0) == 1.0
    assert beta_update(1.1e-12, 1.0, 1.0, 1000.0) == 1e-12


def test_beta_update_dead_band_edges_and_missing_measurements():
    # The dead band holds its edge (|ebops / target - 1| <= tolerance): only the damping term acts.
    assert beta_update(1e-6, 1500.0, 1500.0, 1000.0, tolerance=0.5) == 1e-6
    assert beta_update(1e-6, 1500.0, 1500.0, 1000.0, tolerance=0.25, max_factor=4.0) == pytest.approx(
        1e-6 * 1.5**0.2, rel=1e-12
    )
    assert beta_update(1e-6, 750.0, 750.0, 1000.0, tolerance=0.25) == 1e-6  # below the target too
    # The default band is 2 %: 3 % above the target is outside it.
    assert beta_update(1e-6, 1030.0, 1030.0, 1000.0) == pytest.approx(1e-6 * 1.03**0.2, rel=1e-12)
    # Any positive earlier measurement counts, however small: EBOPs rising from 0.5 to the target 1 double beta.
    assert beta_update(1e-6, 1.0, 0.5, 1.0, max_factor=4.0) == pytest.approx(2e-6, rel=1e-12)
    # No earlier measurement (None or not positive): no damping term.
    for before in (None, 0.0, -5.0):
        assert beta_update(1e-6, 2000.0, before, 1000.0) == pytest.approx(1e-6 * 2**0.2, rel=1e-12)
    # No measurement now (zero, negative or not finite): beta unchanged.
    for now in (0.0, -1.0, math.inf, math.nan):
        assert beta_update(3e-6, now, 2000.0, 1000.0) == 3e-6


def test_beta_target_steps_once_per_epoch_after_its_warmup():
    model = _tiny_model()
    target = BetaTarget(1000.0, beta_init=1e-6, warmup=2, max_factor=4.0)
    target.set_model(model)
    target.on_train_begin()
    assert _layer_betas(model) == [np.float32(1e-6)] * 2
    betas = []
    for epoch, measured in enumerate([2000.0, 2000.0, 2000.0, 2000.0]):
        logs = {'ebops': measured}
        target.on_epoch_end(epoch, logs)
        betas.append(logs['beta'])  # the value used during the epoch
    # Warm-up of 2 epochs at beta_init; then a step per epoch of 0.2 * log 2 (no change of EBOPs).
    assert betas[:3] == [1e-6] * 3
    assert betas[3] == pytest.approx(1e-6 * 2**0.2, rel=1e-12)
    assert target.beta == pytest.approx(1e-6 * 2**0.4, rel=1e-12)
    assert _layer_betas(model) == pytest.approx([1e-6 * 2**0.4] * 2, rel=1e-6)


def test_beta_target_uses_the_documented_controller_defaults():
    target = BetaTarget(1000.0)
    assert (target.beta_init, target.warmup) == (1e-6, 0)
    assert target.settings == dict(gain=1.0, rate=0.2, max_factor=1.2, tolerance=0.02, beta_min=1e-12, beta_max=1.0)
    assert BetaTarget(0.5).target == 0.5  # any positive target


@pytest.mark.parametrize(
    'kwargs',
    [
        {'beta_init': 1e-12},
        {'beta_init': 1.0},
        {'rate': 1.0},
        {'tolerance': 0.0},
        {'warmup': 0},
        {'beta_min': 1e-9, 'beta_init': 1e-9},
    ],
)
def test_beta_target_accepts_the_edges_of_its_settings(kwargs):
    BetaTarget(1000.0, **kwargs)


@pytest.mark.parametrize(
    'kwargs, bad',
    [
        ({'gain': 0.0}, 'gain'),
        ({'rate': 1.5}, 'rate'),
        ({'tolerance': -0.01}, 'tolerance'),
        ({'beta_min': 0.0}, 'beta_min'),
        ({'beta_min': 1.0, 'beta_init': 1.0}, 'beta_min'),
        ({'warmup': -1}, 'warmup'),
        ({'beta_init': 1e-13}, 'beta_init'),
    ],
)
def test_beta_target_names_each_bad_setting(kwargs, bad):
    with pytest.raises(ValueError, match=f'BetaTarget: invalid {bad} '):
        BetaTarget(1000.0, **kwargs)


def test_beta_schedule_interpolates_between_its_points_and_holds_outside():
    schedule = BetaSchedule([(2, 1e-6), (4, 3e-6), (8, 1e-6)])
    before = [schedule(e) for e in (0, 1, 1.5)]  # the first value holds before the first point
    assert before == [1e-6] * 3
    assert [schedule(e) for e in (2, 3, 4, 6, 8, 10)] == pytest.approx([1e-6, 2e-6, 3e-6, 2e-6, 1e-6, 1e-6])
    # At its points a schedule gives their values exactly (the log of 1e-5 and back is 9.999999999999997e-06).
    points = [(0, 1e-7), (2, 1e-5), (4, 3e-5), (6, 0.3)]
    for interpolation in ('linear', 'log'):
        exact = BetaSchedule(points, interpolation=interpolation)
        assert [exact(e) for e, _ in points] == [b for _, b in points]
    log = BetaSchedule([(1, 1e-6), (3, 1e-4)], interpolation='log')
    assert log(2) == pytest.approx(1e-5, rel=1e-12) and log(0) == 1e-6 and log(5) == 1e-4
    assert BetaSchedule(0).points == [(0.0, 0.0)] and BetaSchedule(3).current == 3.0  # integers and zero allowed
    for bad in ([(0, math.inf)], [(0, 1e-6), (5, -1e-6)], [(0, 1e-6), (5, math.nan)]):
        with pytest.raises(ValueError, match='every beta must be finite and >= 0'):
            BetaSchedule(bad)


def test_beta_schedule_sets_and_logs_the_value_of_each_epoch():
    model = _tiny_model()
    schedule = BetaSchedule([(0, 0.0), (4, 4e-6)])
    schedule.set_model(model)
    for epoch in range(3):
        schedule.on_epoch_begin(epoch)
        logs = {'ebops': 1.0}
        schedule.on_epoch_end(epoch, logs)
        assert logs == {'ebops': 1.0, 'beta': epoch * 1e-6}
        assert _layer_betas(model) == pytest.approx([epoch * 1e-6] * 2, rel=1e-6)
    schedule.on_epoch_end(3, None)  # no logs: nothing to write into


def test_beta_warmup_scales_each_layer_by_the_epoch_fraction_and_clips_it():
    warmup = BetaWarmup(4)
    assert [warmup.scale(e) for e in (-2, 0, 1, 4, 9)] == [0.0, 0.0, 0.25, 1.0, 1.0]
    model = _tiny_model()
    for layer, beta in zip(h_layers(model), (2e-6, 4e-6), strict=True):
        layer.beta.assign(beta)
    warmup.set_model(model)
    warmup.on_train_begin()
    warmup.on_epoch_begin(1)
    logs = {'ebops': 1.0}
    warmup.on_epoch_end(1, logs)
    assert logs['beta_scale'] == 0.25
    assert _layer_betas(model) == pytest.approx([0.5e-6, 1e-6], rel=1e-6)
    warmup.on_train_end()
    assert _layer_betas(model) == pytest.approx([2e-6, 4e-6], rel=1e-6)
    with pytest.raises(ValueError, match='epochs must be an int >= 1'):
        BetaWarmup(0)
    BetaWarmup(1)


def _paces(model):
    """Per quantizer (activation ones first per layer): the scale of its bitwidth steps."""
    return {
        q.name: [float(keras.ops.convert_to_numpy(s.scale)) for s in q._scaled_steps]
        for layer in h_layers(model)
        for q in layer.quantizers
    }


@pytest.mark.parametrize('weights', [False, True])
def test_settle_bits_freezes_from_epoch_total_minus_epochs_and_restores(weights):
    model = _tiny_model()
    configured = _paces(model)
    settle = SettleBits(2, weights=True) if weights else SettleBits(2)  # weight bits keep learning by default
    settle.set_model(model)
    settle.set_params({'epochs': 5})
    settle.on_train_begin()
    frozen_names = {
        q.name for layer in h_layers(model) for q in (layer.quantizers if weights else layer.activation_quantizers)
    }
    for epoch in range(5):
        settle.on_epoch_begin(epoch)
        frozen = epoch >= 3
        for name, scales in _paces(model).items():
            expected = [0.0] * len(scales) if frozen and name in frozen_names else configured[name]
            assert scales == expected, (epoch, name)
    settle.on_train_end()
    assert _paces(model) == configured
    assert settle._frozen is None
    SettleBits(0)
    with pytest.raises(ValueError, match='epochs must be an int >= 0'):
        SettleBits(-1)


def test_non_dominated_keeps_what_a_front_would_keep_in_arrival_order():
    def point(name, accuracy, cost):
        return ParetoPoint(Path(f'{name}.keras'), 1, {'acc': accuracy, 'ebops': cost})

    sides = {'acc': 'max', 'ebops': 'min'}
    points = [point('a', 0.90, 100), point('b', 0.95, 300), point('c', 0.95, 200), point('d', 0.90, 100)]
    assert [p.path.stem for p in non_dominated(points, sides)] == ['a', 'c']  # c drops b; d repeats a
    # Dropped when any one kept point matches it, not only when all do.
    points = [point('a', 0.90, 100), point('b', 0.99, 500), point('c', 0.85, 120)]
    assert [p.path.stem for p in non_dominated(points, sides)] == ['a', 'b']
    assert non_dominated([], sides) == []


def _front_with_model(directory, **kwargs):
    front = ParetoFront(directory, **kwargs)
    front.set_model(_tiny_model())
    return front


def test_read_front_sorts_by_the_last_metric(tmp_path):
    front = _front_with_model(tmp_path, metrics=('acc', 'lat', 'cost'), sides=('max', 'min', 'min'))
    for epoch, (acc, lat, cost) in enumerate([(0.9, 1.0, 30.0), (0.8, 3.0, 10.0), (0.7, 2.0, 20.0)]):
        front.on_epoch_end(epoch, {'acc': acc, 'lat': lat, 'cost': cost})
    assert [p.values['cost'] for p in read_front(tmp_path)] == [10.0, 20.0, 30.0]


def test_a_front_creates_nested_directories_and_removes_partial_saves(tmp_path):
    (tmp_path / 'old').mkdir()
    partial = tmp_path / 'old' / '.partial-epoch=0003.keras'
    partial.write_bytes(b'cut short')
    ParetoFront(tmp_path / 'old')
    assert not partial.exists()
    ParetoFront(tmp_path / 'new' / 'front')
    assert (tmp_path / 'new' / 'front').is_dir()


def test_a_front_of_other_sides_in_the_directory_is_refused(tmp_path):
    front = _front_with_model(tmp_path, metrics=('val_loss', 'ebops'), sides=('min', 'min'))
    front.on_epoch_end(0, {'val_loss': 0.5, 'ebops': 10.0})
    with pytest.raises(ValueError, match='holds a front of metrics'):
        ParetoFront(tmp_path, metrics=('val_loss', 'ebops'), sides=('max', 'min'))


def test_missing_validation_metrics_are_named_with_a_hint(tmp_path):
    front = _front_with_model(tmp_path, metrics=('val_accuracy', 'accuracy', 'ebops'), sides=('max', 'max', 'min'))
    with pytest.raises(KeyError, match=r"\['val_accuracy', 'accuracy'\] are not in the epoch logs.*validation_data"):
        front.on_epoch_end(0, {'loss': 1.0})


def test_checkpoints_whose_names_are_taken_get_suffixes_one_two(tmp_path):
    front = _front_with_model(tmp_path)
    front.on_epoch_end(0, {'val_accuracy': 0.5000001, 'ebops': 10.0})
    front.on_epoch_end(0, {'val_accuracy': 0.5000004, 'ebops': 10.0})  # a second fit: same epoch, same 6 digits
    stem = 'epoch=0001-val_accuracy=0.5-ebops=10'
    assert [p.path.name for p in read_front(tmp_path)] == [f'{stem}-1.keras']  # the first one is dominated
    # Two more that trade accuracy against EBOPs, all three on the front under the same rounded name.
    front.on_epoch_end(0, {'val_accuracy': 0.5000002, 'ebops': 9.9999999})
    front.on_epoch_end(0, {'val_accuracy': 0.5000003, 'ebops': 9.99999995})
    names = {p.path.name for p in read_front(tmp_path)}
    assert names == {f'{stem}-1.keras', f'{stem}.keras', f'{stem}-2.keras'}


def test_a_point_with_one_non_finite_metric_is_never_saved(tmp_path):
    front = _front_with_model(tmp_path)
    front.on_epoch_end(0, {'val_accuracy': 0.9, 'ebops': math.nan})
    front.on_epoch_end(1, {'val_accuracy': math.inf, 'ebops': 10.0})
    assert front.points == [] and not list(tmp_path.glob('*.keras'))


# -- layers: documented defaults, edges of the checks, what each part of a layer adds ------------------------------
def _config_of(quantizer, keys):
    config = quantizer.get_config()
    return {key: config[key] for key in keys}


KEYS = ('granularity', 'overflow_mode', 'i_init', 'f_init', 'signed')


def _calibrated_setup(tmp_path, validation_weights=None):
    """A compiled tiny classifier and a calibrated front on 40 random samples (validation: the last 20)."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 4)).astype('float32'), rng.integers(0, 2, 40)
    model = _tiny_model()
    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy'])
    validation = (x[20:], y[20:]) if validation_weights is None else (x[20:], y[20:], validation_weights)
    front = ParetoFront(tmp_path, calibration_data=x[:20], validation_data=validation)
    front.set_model(model)
    return model, front, x, y


def test_a_calibrated_front_scores_with_the_validation_sample_weights(tmp_path):
    """``validation_data=(x, y, sample_weight)``: the calibrated ``val_*`` metrics are weighted by the third item."""
    weights = np.r_[np.ones(10), np.zeros(10)].astype('float32')
    model, front, x, y = _calibrated_setup(tmp_path, weights)
    logs = {}
    front.on_epoch_end(0, logs)
    hgq_calibrate(model, x[:20])
    weighted = model.evaluate(x[20:], y[20:], sample_weight=weights, batch_size=1024, verbose=0, return_dict=True)
    plain = model.evaluate(x[20:], y[20:], batch_size=1024, verbose=0, return_dict=True)
    assert logs['calibrated_val_loss'] == weighted['loss'] != plain['loss']
    with pytest.raises(ValueError, match=r'tuple \(x, y\) or \(x, y, sample_weight\)'):
        ParetoFront(tmp_path, calibration_data=x, validation_data=(x, y, weights, weights))


def test_a_calibrated_front_evaluates_silently_in_batches_of_1024(tmp_path, capfd):
    """The calibration and evaluation passes print nothing (``verbose=0``); ``batch_size`` defaults to 1024."""
    _, front, _, _ = _calibrated_setup(tmp_path)
    assert front.batch_size == 1024 and ParetoFront(tmp_path / 'other', batch_size=64.0).batch_size == 64
    capfd.readouterr()
    front.on_epoch_end(0, {})
    assert capfd.readouterr().out == '' and front.points


def test_a_calibrated_front_is_not_resumed_as_a_plain_one_and_old_indexes_are_plain(tmp_path):
    """front.json records ``calibrated``; an index without the key (written before the option) is a plain front."""
    _, front, _, _ = _calibrated_setup(tmp_path / 'calibrated')
    front.on_epoch_end(0, {})
    with pytest.raises(ValueError, match='holds a front of calibrated checkpoints'):
        ParetoFront(tmp_path / 'calibrated')
    plain = _front_with_model(tmp_path / 'plain')
    plain.on_epoch_end(0, {'val_accuracy': 0.5})
    index = tmp_path / 'plain' / 'front.json'
    content = json.loads(index.read_text())
    assert content.pop('calibrated') is False
    index.write_text(json.dumps(content))
    assert len(ParetoFront(tmp_path / 'plain').points) == 1
    with pytest.raises(ValueError, match='holds a front of uncalibrated checkpoints'):
        ParetoFront(tmp_path / 'plain', calibration_data=np.zeros((1, 4)), validation_data=(np.zeros((1, 4)), [0]))


def test_layer_defaults_are_the_documented_ones():
    model = keras.Sequential(
        [keras.Input((4,)), HQuantize(), HDense(3), HActivation('tanh'), HSoftmax(), HActivation('relu')]
    )
    assert _layer_betas(model) == [0.0] * 5  # no EBOPs penalty unless asked
    lut = model.layers[2]
    assert _config_of(lut.input_quantizer, KEYS) == dict(
        granularity='tensor', overflow_mode='SAT', i_init=3.0, f_init=5.0, signed=True
    )
    assert _config_of(lut.output_quantizer, KEYS) == dict(
        granularity='tensor', overflow_mode='SAT', i_init=1.0, f_init=8.0, signed=True
    )
    softmax = model.layers[3]
    assert _config_of(softmax.input_quantizer, KEYS) == dict(
        granularity='tensor', overflow_mode='SAT', i_init=4.0, f_init=6.0, signed=True
    )
    internal = {
        'exp_input_quantizer': (3.0, 4.0),
        'exp_quantizer': (1.0, 8.0),
        'sum_quantizer': (4.0, 4.0),
        'inv_quantizer': (1.0, 8.0),
        'output_quantizer': (1.0, 8.0),
    }
    for role, (i, f) in internal.items():
        expected = dict(granularity='tensor', overflow_mode='SAT', i_init=i, f_init=f, signed=False)
        assert _config_of(getattr(softmax, role), KEYS) == expected, role
    # relu keeps the plain default input quantizer (per element, WRAP)
    assert _config_of(model.layers[4].input_quantizer, KEYS[:2]) == dict(granularity='element', overflow_mode='WRAP')


def test_an_unknown_activation_is_named_with_the_layer_name():
    with pytest.raises(ValueError, match=r"^act7: unknown activation 'no_such_function'"):
        HActivation('no_such_function', name='act7')
    with pytest.raises(ValueError, match=r'^HActivation: unknown activation'):
        HActivation('no_such_function')


def test_a_table_of_exactly_max_table_size_entries_is_allowed():
    layer = HActivation('tanh', max_table_size=2**9)  # default input format: k + i + f = 1 + 3 + 5
    keras.Sequential([keras.Input((3,)), layer])
    assert len(layer.table()) == 2**9
    small = HActivation('tanh', max_table_size=2**9 - 1)
    keras.Sequential([keras.Input((3,)), small])
    with pytest.raises(ValueError, match='needs a table of 512 entries'):
        small.table()


def _direct_softmax(layer, x):
    """The softmax chain of ``layer``'s quantizers on the functions themselves (float64 numpy), as for large tables."""
    xq = _quantized(layer.input_quantizer, x)
    d = _quantized(layer.exp_input_quantizer, xq.max(axis=-1, keepdims=True) - xq)
    e = _quantized(layer.exp_quantizer, np.exp(-d))
    s = _quantized(layer.sum_quantizer, e.sum(axis=-1, keepdims=True))
    return _quantized(layer.output_quantizer, e * _quantized(layer.inv_quantizer, 1.0 / s))


def test_softmax_computes_directly_when_only_the_exp_table_is_too_large():
    # exp input: unsigned, i = 3, f = 4 -> 128 codes > 64; sum: i = 3, f = 3 -> 64 codes: fits.
    layer = HSoftmax(max_table_size=64, sum_quantizer={'i_init': 3.0, 'f_init': 3.0})
    keras.Sequential([keras.Input((6,)), layer])
    x = np.array([[0.0, -7.5, -6.0, -1.0, -3.25, -0.5]], 'float32')
    y = np.asarray(layer(x), np.float64)
    assert np.max(np.abs(y - _direct_softmax(layer, x.astype(np.float64)))) <= 2**-8  # float32 exp: one step at most
    with pytest.raises(ValueError, match='needs a table of 128 entries'):
        layer.tables()


@pytest.mark.parametrize('make', [HSoftmax, lambda: HActivation('tanh')])
def test_every_table_layer_quantizer_adds_its_bits_decay_in_training(make):
    layer = make()
    keras.Sequential([keras.Input((5,)), layer])
    layer(np.zeros((2, 5), 'float32'), training=True)
    assert all(quantizer.losses for quantizer in layer.quantizers), [q.name for q in layer.quantizers if not q.losses]


def test_conv_errors_list_the_divisors_and_shapes_keep_the_batch_axis():
    with pytest.raises(ValueError, match=r'divide the 6 output positions \(one of \[1, 2, 3, 6\], or -1\), got 4'):
        keras.Sequential([keras.Input((8, 3)), HConv1D(2, 3, parallelization_factor=4)])
    assert HConv1D(2, 3).compute_output_shape((7, 8, 3)) == (7, 6, 2)


def test_kernel_layers_price_every_input_bit_in_their_ebops_not_again_in_bits_cost():
    layer = HDense(3)
    keras.Sequential([keras.Input((4,)), layer])
    assert float(layer.bits_cost()) == 0.0


def test_table_layers_take_any_positive_max_table_size():
    assert HSoftmax(max_table_size=1).max_table_size == 1 and HActivation('tanh', max_table_size=1).max_table_size == 1
    for make in (lambda: HSoftmax(max_table_size=0), lambda: HActivation('tanh', max_table_size=0)):
        with pytest.raises(ValueError, match='max_table_size must be a positive integer, got 0'):
            make()


def test_pooling_accepts_channels_last_by_name_and_refuses_channels_first():
    for make in (HMaxPooling1D, HAveragePooling1D):
        assert make(2, data_format='channels_last').compute_output_shape((None, 8, 3)) == (None, 4, 3)
        with pytest.raises(ValueError, match="only data_format='channels_last' is supported"):
            make(2, data_format='channels_first')
    assert HGlobalAveragePooling2D(data_format='channels_last').compute_output_shape((None, 2, 4, 3)) == (None, 3)


H_LAYER_CLASSES = [
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
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
]


@pytest.mark.parametrize('cls', H_LAYER_CLASSES, ids=lambda c: c.__name__)
def test_layers_are_saved_under_the_hgq_package_name(cls):
    # Saved models name each layer class 'hgq>Class'; loading them with another version relies on it.
    assert keras.saving.get_registered_name(cls) == f'hgq>{cls.__name__}'


def test_layer_variables_keep_their_names():
    dense = HDense(2)
    norm = HBatchNormalization()
    keras.Sequential([keras.Input((3,)), dense, norm])
    assert {v.name for v in norm.weights} >= {'beta', 'gamma', 'offset', 'moving_mean', 'moving_variance'}
    assert {v.name for v in dense.weights} >= {'beta', 'kernel', 'bias'}


@pytest.mark.parametrize('argument', [{'use_bias': True}, {'bias_initializer': 'ones'}, {'bias_regularizer': 'l2'}])
def test_fused_batchnorm_refuses_every_bias_argument(argument):
    with pytest.raises(TypeError, match=f'HDenseBatchNorm.*{next(iter(argument))}'):
        HDenseBatchNorm(4, **argument)


def test_global_pooling_with_keepdims_keeps_the_batch_axis():
    assert HGlobalAveragePooling2D(keepdims=True).compute_output_shape((5, 2, 4, 3)) == (5, 1, 1, 3)
    assert HGlobalAveragePooling1D(keepdims=True).compute_output_shape((5, 8, 3)) == (5, 1, 3)


def test_quantized_weights_are_the_exported_tensors_in_float64():
    layer = HDense(2)
    keras.Sequential([keras.Input((3,)), layer])
    weights = layer.quantized_weights()
    assert list(weights) == ['kernel', 'bias']
    kernel, quantizer = weights['kernel']
    assert kernel.dtype == np.float64 and quantizer is layer.kernel_quantizer
    assert np.array_equal(kernel, np.asarray(layer.qkernel, np.float64))
    assert np.array_equal(weights['bias'][0], np.asarray(layer.qbias, np.float64))


@pytest.mark.parametrize('make', [lambda: HDense(3, activation='relu'), lambda: HConv1D(3, 2, activation='relu')])
def test_relu_inside_a_kernel_layer_zeroes_the_negative_sums(make):
    layer = make()
    shape = (4,) if isinstance(layer, HDense) else (4, 2)
    linear = HDense(3) if isinstance(layer, HDense) else HConv1D(3, 2)
    for one in (layer, linear):
        keras.Sequential([keras.Input(shape), one])
    linear.set_weights(layer.get_weights())
    x = np.random.default_rng(3).normal(size=(64, *shape)).astype('float32')
    plain = np.asarray(linear(x))
    assert np.min(plain) < 0
    assert np.array_equal(np.asarray(layer(x)), np.maximum(plain, 0.0))


def test_default_bias_and_offset_quantizers_have_eight_fractional_bits():
    dense, norm = HDense(2), HBatchNormalization()
    keras.Sequential([keras.Input((3,)), dense, norm])
    assert dense.bias_quantizer.f_init == 8.0 and norm.offset_quantizer.f_init == 8.0
    assert dense.kernel_quantizer.f_init is None and norm.scale_quantizer.f_init is None  # fitted to the weights


def test_batchnorm_scale_bits_are_fitted_to_the_scale():
    # scale 3 / sqrt(1 + 1e-3): init_bits 4 give f = ceil(4 - 1 - log2(3.0)) = 2 (the zero offset would give 3).
    norm = HBatchNormalization(gamma_initializer=keras.initializers.Constant(3.0))
    keras.Sequential([keras.Input((3,)), norm])
    assert np.array_equal(np.asarray(norm.scale_quantizer.f), [2.0, 2.0, 2.0])


def test_convolutions_accept_channels_last_by_name_and_refuse_channels_first():
    assert HConv1D(2, 3, data_format='channels_last').compute_output_shape((None, 8, 3)) == (None, 6, 2)
    with pytest.raises(ValueError, match='channels_last'):
        HConv1D(2, 3, data_format='channels_first')


def test_a_lookup_table_of_exactly_max_table_size_is_what_the_layer_outputs():
    # sin(1000.1 v) in float32 is off by up to ~2e-4 (1000.1 is not a float32), which moves 10 of the 512 codes
    # to another output step: only the table (computed in float64) gives the outputs of table() at every code.
    layer = HActivation(lambda v: keras.ops.sin(v * 1000.1), max_table_size=2**9)
    keras.Sequential([keras.Input((1,)), layer])
    k, i, f = layer.table_format()
    codes = np.arange(-(2 ** (i + f)), 2 ** (i + f))
    x = (codes * 2.0**-f).astype('float32')[:, None]
    assert np.array_equal(np.asarray(layer(x), np.float64)[:, 0], layer.table())


def test_a_pruned_table_input_reads_its_one_entry_computed_in_float64():
    """A zero-width input has a table of one entry (``max_table_size=1`` suffices), evaluated in float64 like all
    tables: ``0.375 - 2**-30`` rounds to 0.25 at ``f = 2``, while float32 would round it to the tie 0.375 (-> 0.5)."""
    layer = HActivation(
        lambda x: x + (0.375 - 2.0**-30),
        max_table_size=1,
        input_quantizer={'signed': False, 'i_init': 0.0, 'f_init': 0.0},
        output_quantizer=_sat(2.0, 2.0),
    )
    keras.Sequential([keras.Input((1,)), layer])
    assert layer.table_format() == (0, 0, 0) and np.array_equal(layer.table(), [0.25])
    assert np.array_equal(np.asarray(layer(np.array([[0.0], [0.3], [-2.0]], 'float32'))), np.full((3, 1), 0.25))


def test_a_pruned_input_element_has_zero_bits_and_costs_no_ebops():
    """``input_bits_exact`` is ``max(k + i + f, 0)``: a width of 0 (or below) is a pruned element, not a 1-bit one."""
    layer = HDense(3, input_quantizer={'signed': False, 'i_init': 0.0, 'f_init': -2.0})
    keras.Sequential([keras.Input((4,)), layer])
    k, i, f = layer.input_quantizer.kif()
    assert np.all(k + i + f <= 0)
    assert np.array_equal(layer.input_bits_exact(), np.zeros(4)) and layer.exact_ebops() == 0.0


def test_global_pooling_shapes_keep_the_batch_axis():
    assert HGlobalAveragePooling2D().compute_output_shape((5, 2, 4, 3)) == (5, 3)
    assert HGlobalAveragePooling1D().compute_output_shape((5, 8, 3)) == (5, 3)


def test_a_convolution_with_a_single_output_position_is_allowed():
    layer = HConv1D(2, 8)
    keras.Sequential([keras.Input((8, 3)), layer])
    assert layer.n_output_positions == 1
    with pytest.raises(ValueError, match='is larger than the input'):
        keras.Sequential([keras.Input((7, 3)), HConv1D(2, 8)])


def test_a_serialized_quantizer_is_rebuilt_as_it_was_saved():
    saved = serialize_quantizer(WeightQuantizer(f_init=3.0, round_mode='TRN'))
    layer = HDense(2, kernel_quantizer=saved)
    assert (layer.kernel_quantizer.f_init, layer.kernel_quantizer.round_mode) == (3.0, 'TRN')
    with pytest.raises(TypeError, match='expected a WeightQuantizer, got ActivationQuantizer'):
        HDense(2, kernel_quantizer=serialize_quantizer(ActivationQuantizer()))


def test_a_quantizer_instance_given_to_a_table_layer_is_used_as_is():
    """``make_quantizer``: an instance is used as is, also where a table layer adds its defaults to dicts."""
    table_input = ActivationQuantizer(granularity='tensor')
    exp_input = ActivationQuantizer(granularity='tensor', overflow_mode='SAT')
    assert HActivation('tanh', input_quantizer=table_input).input_quantizer is table_input
    softmax = HSoftmax(input_quantizer=ActivationQuantizer(), exp_input_quantizer=exp_input)
    assert softmax.exp_input_quantizer is exp_input


def test_softmax_sum_and_inverse_quantizers_hold_one_element_per_slice():
    layer = HSoftmax()
    keras.Sequential([keras.Input((3, 7)), layer])
    assert [q.shape for q in layer.internal_quantizers] == [(3, 7), (3, 7), (3, 1), (3, 1), (3, 7)]


def test_the_training_loss_of_a_layer_is_beta_times_its_ebops_plus_bits_cost():
    layer = HQuantize(beta=0.5, input_quantizer={'bits_decay': 0.0})
    keras.Sequential([keras.Input((4,)), layer])
    layer(np.array([[0.5, -1.25, 3.0, 0.0]], 'float32'), training=True)
    width = float(keras.ops.sum(layer.input_quantizer.bits()))
    assert width > 0
    assert [float(loss) for loss in layer.losses] == pytest.approx([0.5 * width], rel=1e-6)
    layer(np.ones((1, 4), 'float32'))  # inference adds nothing
    assert layer.losses == []


def test_kernel_layer_ebops_agree_with_the_exact_ebops_at_fixed_formats():
    layer = HDense(3, input_quantizer=_sat(2, 3), kernel_quantizer={'f_init': 3})
    keras.Sequential([keras.Input((4,)), layer])
    # Odd multiples of the step 2**-3: every bit from the top one down to f is significant, as both counts assume.
    odd = np.array([1, 3, 5, 7, 9, 11, -1, -3, -5, -7, -9, -11]) / 8
    layer.kernel.assign(odd.reshape(4, 3).astype('float32'))
    assert float(layer.ebops()) == layer.exact_ebops() == 6 * 2 * (1 + 2 + 3 + 3 + 4 + 4)
    # A convolution over 4 output positions with one shared multiplier array: a quarter of the products.
    conv = HConv1D(1, 2, input_quantizer=_sat(2, 3), kernel_quantizer={'f_init': 3})
    keras.Sequential([keras.Input((5, 1)), conv])
    conv.kernel.assign(np.array([3, -5]).reshape(2, 1, 1).astype('float32') / 8)
    assert float(conv.ebops()) == conv.exact_ebops() == 6 * (2 + 3) * 4 / 4


def test_a_pooling_window_as_large_as_the_input_is_allowed():
    assert HMaxPooling1D(4).compute_output_shape((None, 4, 3)) == (None, 1, 3)
    with pytest.raises(ValueError, match='pool_size \\(5,\\) is larger than the input'):
        HMaxPooling1D(5).compute_output_shape((None, 4, 3))


@pytest.mark.parametrize(
    'make, shape, expected',
    [
        (lambda: HConv1D(4, 3), (8, 2), (6, 4)),
        (lambda: HConv2D(4, 3), (8, 8, 1), (6, 6, 4)),
        (lambda: HConv1DBatchNorm(4, 3), (8, 2), (6, 4)),
        (lambda: HConv2DBatchNorm(4, 3), (8, 8, 1), (6, 6, 4)),
        (lambda: HMaxPooling1D(2), (8, 3), (4, 3)),
        (lambda: HMaxPooling2D(2), (8, 6, 3), (4, 3, 3)),
        (lambda: HAveragePooling1D(2), (8, 3), (4, 3)),
        (lambda: HAveragePooling2D(2), (8, 6, 3), (4, 3, 3)),
        (lambda: HGlobalAveragePooling1D(), (8, 3), (3,)),
        (lambda: HGlobalAveragePooling2D(), (8, 4, 3), (3,)),
    ],
)
def test_windowed_layers_take_their_own_number_of_spatial_axes(make, shape, expected):
    model = keras.Sequential([keras.Input(shape), make()])
    assert model.output_shape == (None, *expected)


@pytest.mark.parametrize('make', [HMaxPooling1D, HAveragePooling1D, HMaxPooling2D, HAveragePooling2D])
def test_pooling_takes_the_maximum_or_the_average(make):
    layer = make(2, input_quantizer=_sat(4, 4))
    values = np.array([1.0, 3.0, -2.0, 0.5], 'float32')
    shape = (4, 1) if make in (HMaxPooling1D, HAveragePooling1D) else (2, 2, 1)
    keras.Sequential([keras.Input(shape), layer])
    y = np.asarray(layer(values.reshape(1, *shape))).ravel()
    pairs = [3.0, 0.5] if shape == (4, 1) else [3.0]
    means = [2.0, -0.75] if shape == (4, 1) else [0.625]
    assert y.tolist() == (pairs if make in (HMaxPooling1D, HMaxPooling2D) else means)


def test_windows_of_one_element_are_powers_of_two_and_three_is_not():
    assert HAveragePooling1D(1).compute_output_shape((None, 4, 2)) == (None, 4, 2)
    keras.Sequential([keras.Input((1, 2)), HGlobalAveragePooling1D()])
    with pytest.raises(ValueError, match='power-of-two window'):
        HAveragePooling1D(3)
    with pytest.raises(ValueError, match='have 0'):
        HGlobalAveragePooling1D().build((None, 0, 2))


def _quantized(quantizer, x):
    k, i, f = scalar_kif(quantizer)
    return quantize(x, k, i, f, quantizer.round_mode, quantizer.overflow_mode)


@pytest.mark.parametrize('size, sum_format', [(256, {}), (128, {'i_init': 3.0, 'f_init': 4.0})])
def test_softmax_reads_its_tables_when_a_table_has_exactly_max_table_size_entries(size, sum_format):
    # Exp input: unsigned, i = 3, f = 4 -> 128 codes; sum: i = 4, f = 4 -> 256 codes, or 128. With 20 fractional
    # bits, exp and 1/s in float32 (the direct path) differ from the float64 tables in about 2 % of the outputs.
    fine = {'f_init': 20.0}
    layer = HSoftmax(
        max_table_size=size, exp_quantizer=fine, inv_quantizer=fine, output_quantizer=fine, sum_quantizer=sum_format
    )
    keras.Sequential([keras.Input((8,)), layer])
    x = np.round(np.random.default_rng(0).uniform(-8, 0, size=(64, 8)) * 64) / 64
    exp_table, inv_table = layer.tables()
    xq = _quantized(layer.input_quantizer, x)
    d = _quantized(layer.exp_input_quantizer, xq.max(axis=-1, keepdims=True) - xq)
    e = exp_table[np.round(d * 2.0 ** scalar_kif(layer.exp_input_quantizer)[2]).astype(np.int64)]
    s = _quantized(layer.sum_quantizer, e.sum(axis=-1, keepdims=True))
    r = inv_table[np.round(s * 2.0 ** scalar_kif(layer.sum_quantizer)[2]).astype(np.int64)]
    assert np.array_equal(np.asarray(layer(x.astype('float32')), np.float64), _quantized(layer.output_quantizer, e * r))


def test_conv_ebops_scale_is_the_share_of_output_positions_with_their_own_multipliers():
    scales = []
    for kwargs in ({}, {'parallelization_factor': 2}, {'parallelization_factor': 4}, {'parallelization_factor': -1}):
        layer = HConv1D(1, 2, **kwargs)
        keras.Sequential([keras.Input((5, 1)), layer])  # 4 output positions
        scales.append(layer.ebops_scale())
    assert scales == [0.25, 0.5, 1.0, 1.0]  # default: one multiplier array shared by every position
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match='parallelization_factor must be a positive int or -1'):
            HConv1D(1, 2, parallelization_factor=bad)


@pytest.mark.parametrize(
    'make, message',
    [
        (lambda: HMaxPooling1D(0), 'pool_size must be a positive int or 1 positive ints, got 0'),
        (lambda: HMaxPooling2D(2, strides=(1,)), r'strides must be a positive int or 2 positive ints, got \(1,\)'),
        (lambda: HConv1D(2, 0), 'kernel_size must be a positive int or 1 positive ints, got 0'),
        (lambda: HConv1D(2, 3, strides=-1), 'strides must be a positive int or 1 positive ints, got -1'),
        (lambda: HConv2D(2, 3, strides=(1, 0)), r'strides must be a positive int or 2 positive ints, got \(1, 0\)'),
    ],
)
def test_window_arguments_are_checked_and_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_softmax_direct_path_normalizes_over_the_last_axis_of_3d_inputs():
    layer = HSoftmax(max_table_size=64, sum_quantizer={'i_init': 3.0, 'f_init': 3.0})  # exp table too large
    keras.Sequential([keras.Input((2, 6)), layer])
    x = np.array([[[0.0, -7.5, -6.0, -1.0, -3.25, -0.5], [-2.0, -1.0, 0.0, -4.0, -0.25, -3.0]]], 'float32')
    y = np.asarray(layer(x), np.float64)
    assert np.max(np.abs(y - _direct_softmax(layer, x.astype(np.float64)))) <= 2**-8
    with pytest.raises(ValueError, match='with a fixed last axis'):
        keras.Sequential([keras.Input((3, None)), HSoftmax()])


def test_softmax_quantizer_errors_name_the_role_in_words():
    with pytest.raises(ValueError, match=r'sum quantizer'):
        HSoftmax(sum_quantizer={'granularity': 'element'})


def test_softmax_training_forward_is_close_to_inference():
    layer = HSoftmax()
    keras.Sequential([keras.Input((2, 5)), layer])  # 3-D: the sum runs over the last axis only
    x = np.array([[[0.5, -1.0, 2.0, 0.0, -3.0], [1.0, 1.0, 1.0, 1.0, 1.0]]], 'float32')
    assert np.max(np.abs(np.asarray(layer(x, training=True)) - np.asarray(layer(x)))) < 2**-5


def test_batchnorm_scale_is_gamma_over_the_root_of_variance_plus_epsilon():
    # 0.0615 + 1e-3 = 0.0625: scale 4 (variance - epsilon would give 4.0656, 4.0625 at 6 fractional bits).
    norm = HBatchNormalization(
        scale_quantizer={'f_init': 6}, moving_variance_initializer=keras.initializers.Constant(0.0615)
    )
    keras.Sequential([keras.Input((2,)), norm])
    assert np.asarray(norm.qscale).tolist() == [4.0, 4.0]


def test_a_kernel_layer_training_loss_is_beta_times_its_ebops():
    no_decay = {'bits_decay': 0.0}
    layer = HDense(3, beta=0.5, input_quantizer=no_decay, kernel_quantizer=no_decay, bias_quantizer=no_decay)
    keras.Sequential([keras.Input((4,)), layer])
    layer(np.ones((2, 4), 'float32'), training=True)
    ebops_now = float(layer.ebops())
    assert ebops_now > 0
    assert [float(loss) for loss in layer.losses] == pytest.approx([0.5 * ebops_now], rel=1e-6)


def test_batchnorm_exports_its_quantized_scale_and_offset():
    norm = HBatchNormalization()
    keras.Sequential([keras.Input((3,)), norm])
    weights = norm.quantized_weights()
    assert list(weights) == ['scale', 'offset']
    assert np.array_equal(weights['scale'][0], np.asarray(norm.qscale, np.float64))
    assert np.array_equal(weights['offset'][0], np.asarray(norm.qoffset, np.float64))


def test_dense_acts_on_the_last_axis_which_needs_a_fixed_size():
    model = keras.Sequential([keras.Input((5, 4)), HDense(2)])
    assert model.output_shape == (None, 5, 2)
    with pytest.raises(ValueError, match='the last input axis needs a fixed size'):
        keras.Sequential([keras.Input((5, None)), HDense(2)])


def test_pooling_windows_default_to_two():
    assert keras.Sequential([keras.Input((8, 3)), HMaxPooling1D()]).output_shape == (None, 4, 3)
    assert keras.Sequential([keras.Input((8, 6, 3)), HAveragePooling2D()]).output_shape == (None, 4, 3, 3)


def test_a_sum_pays_the_bits_of_every_input():
    layer = HAdd()
    inputs = [keras.Input((3,)) for _ in range(3)]
    keras.Model(inputs, layer(inputs))
    for n, quantizer in enumerate(layer.activation_quantizers):
        quantizer.f.assign(np.full(quantizer.f.shape, 2.0 + n, 'float32'))
    widths = [float(keras.ops.sum(q.bits())) for q in layer.activation_quantizers]
    assert float(layer.bits_cost()) == sum(widths) and len(set(widths)) == 3


def test_beta_is_a_variable_that_no_optimizer_trains():
    layer = HDense(2, beta=1e-5)
    keras.Sequential([keras.Input((3,)), layer])
    assert 'beta' in [v.name for v in layer.non_trainable_weights]
    assert 'beta' not in [v.name for v in layer.trainable_weights]


def test_batchnorm_checks_momentum_and_its_last_axis():
    HBatchNormalization(momentum=0.0)
    with pytest.raises(ValueError, match=r'momentum must be in \[0, 1\), got 1.0'):
        HBatchNormalization(momentum=1.0)
    with pytest.raises(ValueError, match='the last input axis needs a fixed size'):
        keras.Sequential([keras.Input((5, None)), HBatchNormalization()])


def test_a_pooling_window_larger_than_any_one_axis_is_refused():
    with pytest.raises(ValueError, match='is larger than the input'):
        HMaxPooling2D((5, 1)).compute_output_shape((None, 4, 4, 1))


def test_batchnorm_offset_is_added_to_the_shift():
    norm = HBatchNormalization(offset_initializer=keras.initializers.Constant(0.5))
    keras.Sequential([keras.Input((2,)), norm])
    assert np.asarray(norm.qoffset).tolist() == [0.5, 0.5]  # moving mean 0: the offset itself


def test_a_lookup_table_too_large_for_its_limit_is_computed_directly():
    # Input k = 1, i = 6, f = 0: 128 codes > 16, so the layer computes q(tanh(x)) instead of reading a table.
    layer = HActivation('tanh', max_table_size=16, input_quantizer={'i_init': 6.0, 'f_init': 0.0})
    keras.Sequential([keras.Input((1,)), layer])
    x = np.arange(-64, 64, dtype='float32')[:, None]
    expected = _quantized(layer.output_quantizer, np.tanh(x.astype(np.float64)))
    assert np.max(np.abs(np.asarray(layer(x), np.float64) - expected)) <= 2**-8


def test_activation_layers_list_their_output_quantizer():
    table = HActivation('tanh')
    assert table.quantizers == [table.input_quantizer, table.output_quantizer]
    relu = HActivation('relu')
    assert relu.quantizers == [relu.input_quantizer]


def test_pooling_names_itself_when_an_axis_has_no_fixed_size():
    with pytest.raises(ValueError, match=r'^pool: every axis but the batch axis needs a fixed size'):
        keras.Sequential([keras.Input((None, 3)), HMaxPooling1D(name='pool')])


def test_concatenate_output_size_is_unknown_if_one_input_size_is():
    assert HConcatenate().compute_output_shape([(None, 2), (None, None)]) == (None, None)
    assert HConcatenate().compute_output_shape([(None, 2), (None, 3)]) == (None, 5)


def test_a_lookup_table_may_wrap_its_input_but_must_saturate_its_output():
    HActivation('tanh', input_quantizer={'overflow_mode': 'WRAP'})
    with pytest.raises(ValueError, match='the output quantizer must saturate'):
        HActivation('tanh', output_quantizer={'overflow_mode': 'WRAP'})


def test_merge_and_convolution_shape_checks():
    with pytest.raises(ValueError, match='kernel_size \\(5, 1\\) is larger than the input'):
        keras.Sequential([keras.Input((4, 4, 1)), HConv2D(1, (5, 1))])
    with pytest.raises(ValueError, match='dilation_rate must be a positive int or 1 positive ints, got 0'):
        HConv1D(2, 3, dilation_rate=0)
    three = [keras.Input((2,)) for _ in range(3)]
    with pytest.raises(ValueError, match='expected 2 inputs, got 3'):
        HMultiply()(three)
    with pytest.raises(ValueError, match='expected 2 inputs, got 3'):
        HSubtract()(three)
    with pytest.raises(ValueError, match='all inputs must have the same rank'):
        HConcatenate()([keras.Input((2,)), keras.Input((2, 3))])


def test_a_batchnorm_training_loss_is_beta_times_its_ebops():
    """Frozen (``trainable=False``), it normalizes with its moving statistics while training, so the loss it adds
    is ``beta * ebops()`` exactly (EBOPs above 1, so a quotient cannot pass)."""
    quiet = {'bits_decay': 0.0}
    norm = HBatchNormalization(beta=0.5, input_quantizer=quiet, scale_quantizer=quiet, offset_quantizer=quiet)
    keras.Sequential([keras.Input((3,)), norm])
    norm.trainable = False
    norm(np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]], 'float32'), training=True)
    ebops_now = float(norm.ebops())
    assert ebops_now > 1.0 and [float(loss) for loss in norm.losses] == pytest.approx([0.5 * ebops_now], rel=1e-6)


def test_a_merge_layer_called_directly_wants_a_list_of_one_input_per_quantizer():
    layer = HAdd()
    layer.build([(None, 4), (None, 4)])
    x = keras.ops.ones((2, 4))
    with pytest.raises(ValueError, match='expected a list of 2 inputs'):
        layer([x, x, x])
    with pytest.raises(ValueError, match='expected a list of 2 inputs'):
        layer(x)  # one tensor of batch 2 is not two inputs


def test_batchnorm_prices_its_input_in_its_ebops_not_again_in_bits_cost():
    norm = HBatchNormalization()
    keras.Sequential([keras.Input((3,)), norm])
    assert norm.priced_quantizers == [norm.input_quantizer] and float(norm.bits_cost()) == 0.0


# -- quantizer: exact integer bits of tracked ranges ----------------------------------------------------------------
def test_tracked_integer_bits_are_exact_where_log2_is_off_by_ulps():
    """``i = ceil(log2(.))`` exactly: Keras's ``log2`` gives ``-25.999998`` for ``2**-26`` and exactly ``4`` for
    ``16 + 2**-19`` (as ``16 + 2**-f`` enters the unsigned bound), one step too many and one too few."""
    tiny = ActivationQuantizer(f_init=26.0, i_init=-3.0, overflow_mode='WRAP')
    tiny.build((None, 2))
    tiny.set_range(np.array([-(2.0**-26), 0.0], 'float32'), np.array([0.0, 2.0**-26], 'float32'))
    k, i, _ = tiny.kif()
    assert k.tolist() == [1, 0] and i.tolist() == [-26, -25]  # [-2**-26, 0] in 1 bit; [0, 2**-26] in 1 bit
    wide = ActivationQuantizer(f_init=19.0, overflow_mode='WRAP')
    wide.build((None, 2))
    wide.set_range(np.zeros(2, 'float32'), np.array([16.0, 15.0], 'float32'))
    k, i, _ = wide.kif()
    assert k.tolist() == [0, 0] and i.tolist() == [5, 4]  # 16 needs 5 integer bits, 15 needs 4


def test_a_repeated_query_runs_op_by_op_once_then_as_one_graph_for_all_shapes():
    """``_RepeatedQuery`` (kif, exact_bits): the first call eager, the second traced, later calls reuse a trace that
    TensorFlow relaxes to any length after a second shape (``reduce_retracing``); other backends always run ``fn``."""
    if keras.backend.backend() != 'tensorflow':
        pytest.skip('compiled queries exist under TensorFlow only')
    import tensorflow as tf

    from hgq.quantizer import _RepeatedQuery

    eager = []

    def double(x):
        eager.append(tf.executing_eagerly())
        return x * 2.0

    query = _RepeatedQuery(double)
    for n in (1, 1, 1, 2, 3, 4):
        assert query(tf.ones(n)).numpy().tolist() == [2.0] * n
    assert eager == [True, False, False]  # eager, traced for length 1, traced once more for any length


def test_a_frozen_bitwidth_has_no_step_variable_and_quantizes_at_its_value():
    q = ActivationQuantizer(f_init=2.0, overflow_mode='SAT', f_trainable=False)
    q.build((None, 2))
    assert [v.name for v in q.trainable_weights] == ['i', 'i_step']
    assert q(np.array([[0.3, -0.6]], 'float32'), training=True).numpy().tolist() == [[0.25, -0.5]]
