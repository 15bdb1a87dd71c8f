"""Bit allocation without training (hgq.allocate) and the float-to-H-model conversion (hgq.from_keras)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import hgq
from hgq.allocate import InfeasibleBudgetError, allocate
from hgq.allocate.core import _InputRanges
from hgq.allocate.numerics import (
    LayerOptions,
    hutchinson_diagonal,
    orthogonality_importance,
    quantize_weights,
    solve_allocation,
    weight_fractional_bits,
)
from hgq.layers import HConv1DBatchNorm, HDense, HLayer, HQuantize
from hgq.quantizer import ActivationQuantizer

# -- the integer program against brute force -----------------------------------------------------------------------


def _brute_force(layers: list[LayerOptions], budget: float) -> float:
    """Least total penalty over every combination of options within the budget (inf when none is)."""
    per_layer = []
    for opt in layers:
        a, c, w = opt.cost.shape
        choices = [(act, np.array(ws)) for act in range(a) for ws in itertools.product(range(w), repeat=c)]
        per_layer.append(np.array([(opt.cost_of(*ch), opt.penalty_of(*ch)) for ch in choices]))
    grids = np.meshgrid(*[np.arange(len(options)) for options in per_layer], indexing='ij')
    cost = sum(options[g.ravel(), 0] for options, g in zip(per_layer, grids, strict=True))
    penalty = sum(options[g.ravel(), 1] for options, g in zip(per_layer, grids, strict=True))
    feasible = cost <= budget * (1 + 1e-9)
    return float(np.min(penalty[feasible])) if np.any(feasible) else np.inf


def _toy_layers(rng: np.random.Generator, channels: int) -> list[LayerOptions]:
    """Three layers, 2 activation and 3 weight options; costs grow and penalties fall with bits, as in a model."""
    layers = []
    for n in range(3):
        act_bits = np.array([2.0, 4.0])
        weight_bits = np.array([2.0, 3.0, 5.0])
        size = rng.uniform(5, 20, size=channels)
        cost = act_bits[:, None, None] * weight_bits[None, None, :] * size[None, :, None]
        weight_penalty = rng.uniform(0.5, 2.0, size=(channels, 1)) * 2.0 ** -weight_bits[None, :]
        act_penalty = rng.uniform(0.5, 2.0) * 2.0**-act_bits
        layers.append(LayerOptions(cost, weight_penalty, act_penalty, f'layer{n}'))
    return layers


@pytest.mark.parametrize('channels', [1, 2])
def test_integer_program_matches_brute_force(channels):
    rng = np.random.default_rng(channels)
    for _ in range(4):
        layers = _toy_layers(rng, channels)
        low = sum(float(np.min(np.sum(np.min(o.cost, axis=2), axis=1))) for o in layers)
        high = sum(float(np.max(np.sum(np.max(o.cost, axis=2), axis=1))) for o in layers)
        for budget in np.linspace(low, high, 5):
            solution = solve_allocation(layers, budget)
            assert solution.cost <= budget + 1e-9
            assert solution.penalty == pytest.approx(_brute_force(layers, budget), rel=1e-9, abs=1e-12)


def test_integer_program_respects_excluded_options():
    cost = np.array([[[1.0, 2.0, 4.0]]])
    allowed = np.array([[[True, True, False]]])
    opt = LayerOptions(cost, np.array([[3.0, 1.0, 0.0]]), np.zeros(1), 'dense', allowed)
    assert solve_allocation([opt], budget=None).weights[0].tolist() == [1]


def test_infeasible_budget_names_the_minimum():
    layers = _toy_layers(np.random.default_rng(0), 1)
    minimum = sum(float(np.min(o.cost)) for o in layers)
    with pytest.raises(InfeasibleBudgetError, match='minimum feasible') as info:
        solve_allocation(layers, minimum * 0.99)
    assert info.value.minimum == pytest.approx(minimum)


# -- stateless helpers ---------------------------------------------------------------------------------------------


def test_weight_formats_are_power_of_two_and_clip_to_the_bits():
    w = np.array([[0.3, -0.9], [0.05, 0.6]])
    f = weight_fractional_bits(w, 4, axes=(0, 1), scale='max')
    assert f.shape == (1, 1) and f.item() == 2.0  # 0.9 * 4 = 3.6 -> 4 <= 7
    q = quantize_weights(w, 2, weight_fractional_bits(w, 2, axes=(0,), scale='mse'))
    codes = q * 2.0 ** weight_fractional_bits(w, 2, axes=(0,), scale='mse')
    assert set(np.unique(codes).tolist()) <= {-1.0, 0.0, 1.0}  # ternary


def test_hutchinson_recovers_a_diagonal_hessian_and_a_trace():
    h = np.diag([1.0, -2.0, 5.0])
    assert hutchinson_diagonal(lambda v: [h @ v[0]], [(3,)], n_probes=2)[0].tolist() == [1.0, -2.0, 5.0]
    dense = np.random.default_rng(0).normal(size=(6, 6))
    dense = dense @ dense.T
    estimate = hutchinson_diagonal(lambda v: [dense @ v[0]], [(6,)], n_probes=4000, seed=1)[0]
    assert np.sum(estimate) == pytest.approx(np.trace(dense), rel=0.05)


def test_orthogonality_importance_favours_new_information():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8))
    theta = orthogonality_importance([x, 3 * x, rng.normal(size=(32, 8))])
    assert theta.sum() == pytest.approx(1.0)
    assert theta[2] > theta[0] and theta[0] == pytest.approx(theta[1])


# -- from_keras ----------------------------------------------------------------------------------------------------


def _open_ranges(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, HLayer):
            for q in layer.activation_quantizers:
                if isinstance(q, ActivationQuantizer) and q.tracks_range:
                    q.set_range(-(2.0**10), 2.0**10)


def _randomize_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, n))
            layer.beta.assign(rng.normal(size=n))
            layer.moving_mean.assign(rng.normal(size=n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))


def test_from_keras_with_wide_formats_predicts_like_the_float_model():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    float_model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, activation='relu'),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(4, 2),
            keras.layers.BatchNormalization(),
            keras.layers.Activation('relu'),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ]
    )
    _randomize_batchnorm(float_model, rng)
    wide = {'f_init': 16}
    h_model = hgq.from_keras(float_model, input_quantizer=wide, kernel_quantizer=wide, bias_quantizer=wide)
    names = [type(layer).__name__ for layer in h_model.layers]
    assert names == ['HQuantize', 'HConv2D', 'HMaxPooling2D', 'HConv2D', 'Flatten', 'HDense', 'HDense']
    assert [getattr(layer, 'activation', None) for layer in h_model.layers[1:4:2]] == ['relu', 'relu']
    _open_ranges(h_model)
    x = rng.normal(size=(64, 8, 8, 2)).astype('float32')
    expected = float_model.predict(x, verbose=0)
    got = h_model.predict(x, verbose=0)
    # rounding to 2**-16 of inputs and weights, through three layers: far below the outputs' scale
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert np.max(np.abs(expected)) > 0.1


def test_from_keras_rejects_what_it_cannot_map():
    branchy_in = keras.Input((4,))
    branchy = keras.Model(branchy_in, keras.layers.Add()([keras.layers.Dense(4)(branchy_in), branchy_in]))
    with pytest.raises(ValueError, match='chain|no H-layer'):
        hgq.from_keras(branchy)
    unknown = keras.Sequential([keras.Input((4,)), keras.layers.LayerNormalization()])
    with pytest.raises(ValueError, match='LayerNormalization'):
        hgq.from_keras(unknown)


# -- allocate on digits --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def digits_model():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype('float32')
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation='relu'), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], epochs=15, batch_size=64, verbose=0)
    accuracy = float(np.mean(np.argmax(model.predict(x[1200:], verbose=0), 1) == y[1200:]))
    return model, x, y, accuracy


@pytest.mark.parametrize(
    ('method', 'budget', 'granularity'),
    [('hawq_v3', 2500.0, 'tensor'), ('ompq', 2500.0, 'channel'), ('cluster', 6000.0, 'tensor')],
)
def test_allocate_meets_the_budget_with_frozen_bits(digits_model, method, budget, granularity, tmp_path):
    model, x, y, float_accuracy = digits_model
    weights_before = [w.copy() for w in model.get_weights()]
    h_model, report = allocate(
        model,
        x[:1200],
        y[:1200],
        method=method,
        budget_ebops=budget,
        granularity=granularity,
        verbose=0,
        return_report=True,
    )
    assert [np.array_equal(a, b) for a, b in zip(weights_before, model.get_weights(), strict=True)] == [True] * 4
    assert hgq.ebops(h_model) <= budget
    assert report['ebops'] == hgq.ebops(h_model)
    assert all(not q.f.trainable for layer in h_model.layers if isinstance(layer, HLayer) for q in layer.quantizers)
    accuracy = float(np.mean(np.argmax(h_model.predict(x[1200:], verbose=0), 1) == y[1200:]))
    assert accuracy > 0.5 * float_accuracy  # a working classifier, not a collapsed one
    # recalibrating on the same data changes nothing; saving and loading keeps outputs and EBOPs
    assert hgq.calibrate(h_model, x[:1200]) == report['ebops']
    if method != 'hawq_v3':
        return
    path = tmp_path / 'allocated.keras'
    h_model.save(path)
    loaded = keras.models.load_model(path)
    assert hgq.ebops(loaded) == report['ebops']
    np.testing.assert_array_equal(loaded.predict(x[1200:], verbose=0), h_model.predict(x[1200:], verbose=0))


@pytest.mark.parametrize('xla', [False, True])
def test_compiled_range_pass_observes_what_calibrate_observes(digits_model, xla):
    """The budget loop's range pass (one batch shape, the last batch filled up with its own rows; a plain graph or
    XLA) finds exactly the ranges of hgq.calibrate on an allocated model."""
    model, x, y, _ = digits_model
    x = x + 0.5  # no input is 0: rows that are not the data's would show in the minima
    h_model = allocate(model, x[:1200], method='ompq', budget_ebops=3000, granularity='channel', verbose=0)
    hgq.calibrate(h_model, x[:1000])
    ranges = _InputRanges(h_model, x[:1000], batch_size=384, xla=xla)  # 1000 = 2 * 384 + 232
    quantizers = [layer.input_quantizer for layer in ranges.layers]
    assert len(quantizers) == 3  # the input and both Dense layers

    def observed():
        return [(keras.ops.convert_to_numpy(q.vmin), keras.ops.convert_to_numpy(q.vmax)) for q in quantizers]

    calibrated = observed()
    for q in quantizers:
        q.set_range(-1.0, 1.0)
    ranges.observe()
    for (low, high), (low_ref, high_ref) in zip(observed(), calibrated, strict=True):
        np.testing.assert_array_equal(low, low_ref)
        np.testing.assert_array_equal(high, high_ref)


def test_cluster_gives_ternary_weights_with_shared_power_of_two_scales(digits_model):
    model, x, y, _ = digits_model
    h_model = allocate(model, x[:1200], method='cluster', bits=(2,), cluster_size=4, verbose=0)
    for layer in h_model.layers:
        if isinstance(layer, HDense):
            f = keras.ops.convert_to_numpy(layer.kernel_quantizer.f).reshape(-1)
            codes = keras.ops.convert_to_numpy(layer.qkernel) * 2.0**f
            assert set(np.unique(codes).tolist()) <= {-1.0, 0.0, 1.0}
            clusters = f[: len(f) // 4 * 4].reshape(-1, 4)
            assert np.all(clusters == clusters[:, :1])
            assert np.max(layer.input_bits_exact()) == 8


def test_allocate_accepts_an_h_model_and_leaves_it_unchanged(digits_model):
    model, x, y, _ = digits_model
    h_in = hgq.from_keras(model)
    hgq.calibrate(h_in, x[:1200])
    before = hgq.ebops(h_in)
    out = allocate(h_in, x[:1200], y[:1200], method='ompq', budget_ebops=3000, verbose=0)
    assert hgq.ebops(out) <= 3000
    assert hgq.ebops(h_in) == before


def test_finetuning_keeps_formats_and_budget(digits_model):
    model, x, y, _ = digits_model
    h_model = allocate(model, x[:1200], y[:1200], method='ompq', budget_ebops=2500, finetune_epochs=1, verbose=0)
    assert hgq.ebops(h_model) <= 2500
    for layer in h_model.layers:
        if isinstance(layer, HDense):
            f = keras.ops.convert_to_numpy(layer.kernel_quantizer.f)
            codes = np.abs(keras.ops.convert_to_numpy(layer.qkernel) * 2.0**f)
            assert np.max(codes) <= 127  # within the widest option (8 bits): clipped while training


def test_allocate_infeasible_budget_is_a_clear_error(digits_model):
    model, x, y, _ = digits_model
    with pytest.raises(InfeasibleBudgetError, match=r'minimum feasible [0-9.]+ EBOPs') as info:
        allocate(model, x[:1200], y[:1200], method='hawq_v3', budget_ebops=10, verbose=0)
    assert info.value.minimum > 10


def test_allocate_checks_its_arguments_first(digits_model):
    model, x, y, _ = digits_model
    with pytest.raises(ValueError, match='method must be one of'):
        allocate(model, x, method='hawq')
    with pytest.raises(ValueError, match=r'x: expected samples of shape \(64,\)'):
        allocate(model, x[:, :10], method='ompq', budget_ebops=1000)
    with pytest.raises(ValueError, match='needs budget_ebops'):
        allocate(model, x, method='hawq_v3')
    with pytest.raises(ValueError, match='finetune_epochs > 0 needs the targets y'):
        allocate(model, x, method='ompq', budget_ebops=1000, finetune_epochs=1)


def test_cli_allocate_writes_a_model_within_the_budget(digits_model, tmp_path, capsys):
    from hgq_cli import main

    model, x, y, _ = digits_model
    model.save(tmp_path / 'float.keras')
    np.save(tmp_path / 'x.npy', x[:1200])
    np.save(tmp_path / 'y.npy', y[:1200])
    out = tmp_path / 'allocated.keras'
    common = ['allocate', str(tmp_path / 'float.keras'), '--data', str(tmp_path / 'x.npy'), '--targets']
    common += [str(tmp_path / 'y.npy'), '--method', 'hawq_v3', '-o', str(out)]
    assert main([*common, '--budget-ebops', '3000', '--quiet']) == 0
    assert hgq.ebops(keras.models.load_model(out)) <= 3000
    out.unlink()
    assert main([*common, '--budget-ebops', '10']) == 2
    assert 'minimum feasible' in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_allocated_model_converts_bit_exactly(digits_model, tmp_path):
    from csim import assert_csim_bit_exact

    model, x, y, _ = digits_model
    h_model = allocate(model, x[:1200], y[:1200], method='hawq_v3', budget_ebops=2500, verbose=0)
    assert_csim_bit_exact(h_model, x[:1200], tmp_path)  # on the data and on the data doubled (overflows)


def test_allocate_conv_model_and_fused_batchnorm_h_model():
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    x = rng.normal(size=(256, 16, 2)).astype('float32')
    y = rng.integers(0, 3, size=256)
    conv = keras.Sequential(
        [
            keras.Input((16, 2)),
            keras.layers.Conv1D(4, 3, activation='relu'),
            keras.layers.MaxPooling1D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    out = allocate(conv, x, method='ompq', budget_ebops=400, granularity='channel', verbose=0)
    assert 0 < hgq.ebops(out) <= 400
    h_bn = keras.Sequential(
        [keras.Input((16, 2)), HQuantize(), HConv1DBatchNorm(4, 3, activation='relu'), keras.layers.Flatten()]
    )
    h_bn.add(HDense(3))
    h_bn.layers[1].moving_variance.assign(rng.uniform(0.2, 4.0, 4))
    out = allocate(h_bn, x, y, method='hawq_v3', budget_ebops=600, verbose=0)
    assert 0 < hgq.ebops(out) <= 600
    assert isinstance(out.layers[1], HConv1DBatchNorm)
