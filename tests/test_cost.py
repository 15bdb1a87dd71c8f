"""``hgq.cost``: the LUT estimate's terms counted by hand, its differentiable form and its use as a penalty."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from learning import step_variable

import hgq
from hgq.cost import COST_TERMS, LUT_COEFFICIENTS, LUTPenalty, cost_terms, live_masks, lut_cost, lut_estimate
from hgq.layers import HAdd, HConcatenate, HConv1D, HConv2D, HDense, HMaxPooling2D, HQuantize


def _two_layer_model() -> keras.Model:
    """2 -> 2 -> 1 with hand-set weights and bits: every term can be counted by hand."""
    model = keras.Sequential([
        keras.Input((2,)),
        HDense(2, activation='relu', use_bias=False, input_quantizer={'f_init': 2}, kernel_quantizer={'f_init': 3}),
        HDense(1, use_bias=False, input_quantizer={'f_init': 1}, kernel_quantizer={'f_init': 3}),
    ])  # fmt: skip
    model.layers[0].kernel.assign(np.array([[0.75, 0.0], [-0.5, 1.0]], dtype='float32'))  # bits 2, 0 / 1, 1
    model.layers[1].kernel.assign(np.array([[0.625], [0.0]], dtype='float32'))  # bits 3, 0
    # inputs in [0, 1.5]: unsigned, 1 integer bit, 2 fractional bits -> 3 bits each
    hgq.calibrate(model, np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]], dtype='float32'))
    return model


def test_terms_counted_by_hand() -> None:
    model = _two_layer_model()
    assert model.layers[0].input_bits_exact().tolist() == [3, 3]
    hidden_bits = model.layers[1].input_bits_exact()
    assert hidden_bits[0] > 0
    terms = cost_terms(model)
    # layer 1: bits(a) = (3, 3), bits(w) = [[2, 0], [1, 1]]; layer 2: bits(a) = hidden_bits, bits(w) = (3, 0).
    # Hidden unit 1 reaches the output through a zero weight only: its logic (3 x 1 bits) is dead and not counted.
    ebops = 3 * 2 + 3 * 1 + hidden_bits[0] * 3
    adder = 3 * 1 + 3 * 1 + hidden_bits[0] * 1
    weight = 2 + 1 + 3
    expected = {'ebops': ebops, 'adder_bits': adder, 'weight_bits': weight, 'act_bits': hidden_bits[0], 'pool_bits': 0}
    # WRAP and round-half-up only: wiring and constants folded into the adders
    expected.update(sat_round_bits=0, sat_round_in_bits=0)
    assert terms == expected
    assert terms['ebops'] == hgq.ebops(model) - 3 * 1


def _saturating_model(relu: bool) -> keras.Model:
    """2 -> 1 -> 1 whose quantizers saturate (unsigned) and round ties to even, with hand-set formats and weights."""

    def saturating(i: float, f: float) -> dict:
        return {'overflow_mode': 'SAT', 'round_mode': 'RND_CONV', 'signed': False, 'i_init': i, 'f_init': f}

    model = keras.Sequential([
        keras.Input((2,)),
        HQuantize(input_quantizer=saturating(1, 1)),
        HDense(1, activation='relu' if relu else None, use_bias=False, input_quantizer=saturating(1, 1),
               kernel_quantizer={'f_init': 2}),
        HDense(1, use_bias=False, input_quantizer=saturating(1, 0), kernel_quantizer={'f_init': 1}),
    ])  # fmt: skip
    model.layers[1].kernel.assign(np.array([[0.75], [-0.5]], dtype='float32'))
    model.layers[2].kernel.assign(np.array([[0.5]], dtype='float32'))
    return model


@pytest.mark.parametrize('relu', [True, False])
def test_saturating_and_ties_to_even_requantization_counted_by_hand(relu: bool) -> None:
    model = _saturating_model(relu)
    # the model input: ports (signed, 1 + 1 integer bits, 1 + 2 fractional bits) -> 6 bits for each of 2 inputs
    # the first dense layer's quantizer holds HQuantize's format (0, 1, 1) whole: wiring, nothing counted
    # the second's reads the accumulator 0.75 a - 0.5 b, a and b in [0, 1.5]: [-0.75, 1.125] with 3 fractional bits;
    # after relu [0, 1.125]: unsigned, 1 integer bit -> 4 bits (without relu: signed -> 5 bits), rounded to 0
    accumulator = 4 if relu else 5
    terms = cost_terms(model)
    assert (terms['sat_round_in_bits'], terms['sat_round_bits']) == (2 * 6, accumulator)
    both = {'sat_round_bits': 1.0, 'sat_round_in_bits': 10.0}
    assert float(lut_cost(model, both)) == pytest.approx(10 * 2 * 6 + accumulator)
    assert lut_estimate(model, both) == pytest.approx(10 * 2 * 6 + accumulator)
    wrapping = cost_terms(_two_layer_model())
    assert wrapping['sat_round_bits'] == wrapping['sat_round_in_bits'] == 0


def test_saturating_model_trains_under_the_lut_penalty() -> None:
    """The term works as a compiled training penalty (graph mode) and its gradient reaches the output bits."""
    model = _saturating_model(relu=True)
    x = np.random.default_rng(0).uniform(0, 1.5, size=(128, 2)).astype('float32')
    q = model.layers[2].input_quantizer
    with tf.GradientTape() as tape:
        cost = lut_cost(model, {'sat_round_bits': 1.0})
    (grad,) = tape.gradient(cost, [step_variable(q, q.f)])
    assert grad is not None and np.all(np.asarray(grad) > 0)  # fewer bits of the requantized element: cheaper
    model.compile(keras.optimizers.Adam(1e-2), LUTPenalty('mse', model, 1e-3))
    history = model.fit(x, np.zeros((128, 1)), epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history['loss']))


def test_saturating_requantization_of_a_convolution_counts_every_live_position() -> None:
    """Conv1D (3 positions in, 2 out) -> Flatten -> a saturating, ties-to-even quantizer: width per position."""
    sat = {'overflow_mode': 'SAT', 'round_mode': 'RND_CONV', 'signed': False}
    model = keras.Sequential([
        keras.Input((3, 1)),
        HQuantize(input_quantizer={**sat, 'i_init': 1, 'f_init': 1}),
        HConv1D(1, 2, activation='relu', use_bias=False, input_quantizer={**sat, 'i_init': 1, 'f_init': 1},
                kernel_quantizer={'f_init': 2}),
        keras.layers.Flatten(),
        HDense(1, use_bias=False, input_quantizer={**sat, 'i_init': 1, 'f_init': 0}, kernel_quantizer={'f_init': 1}),
    ])  # fmt: skip
    model.layers[1].kernel.assign(np.array([0.75, -0.5], dtype='float32').reshape(2, 1, 1))
    model.layers[3].kernel.assign(np.full((2, 1), 0.5, dtype='float32'))
    terms = cost_terms(model)
    # ports: 3 x 6 bits; each of the 2 output positions as the dense case: [0, 1.125] at 3 fractional bits, 4 bits
    assert (terms['sat_round_in_bits'], terms['sat_round_bits']) == (3 * 6, 2 * 4)
    assert float(lut_cost(model, {'sat_round_bits': 1.0})) == pytest.approx(2 * 4)


def test_saturating_quantizer_that_drops_no_bit_costs_nothing() -> None:
    """A saturating quantizer wider than the accumulator in range and precision is wiring."""
    model = _saturating_model(relu=True)
    q = model.layers[2].input_quantizer
    q.i.assign(np.full(q.i.shape, 3.0, dtype='float32'))
    q.f.assign(np.full(q.f.shape, 3.0, dtype='float32'))  # holds [0, 1.125] at 3 fractional bits whole
    assert cost_terms(model)['sat_round_bits'] == 0 and cost_terms(model)['sat_round_in_bits'] == 2 * 6


def test_convolution_terms_count_every_output_position() -> None:
    model = keras.Sequential([keras.Input((8, 2)), HQuantize(), HConv1D(3, 3, parallelization_factor=1)])
    hgq.calibrate(model, np.random.default_rng(0).normal(size=(256, 8, 2)).astype('float32'))
    positions = model.layers[1].n_output_positions
    assert positions == 6
    # EBOPs count one multiplier array reused over the positions; the fully parallel logic has all of them
    assert cost_terms(model)['ebops'] == pytest.approx(hgq.ebops(model) * positions)


def _conv_pool_model(functional: bool = False) -> keras.Model:
    """1x1 conv on 5x5 -> 2x2 max pooling ('valid': row and column 4 of the conv output are never read) -> dense."""
    layers = [HQuantize(), HConv2D(2, 1), HMaxPooling2D(2), keras.layers.Flatten(), HDense(1)]
    if functional:
        inputs = keras.Input((5, 5, 1))
        outputs = inputs
        for layer in layers:
            outputs = layer(outputs)
        model = keras.Model(inputs, outputs)
    else:
        model = keras.Sequential([keras.Input((5, 5, 1)), *layers])
    conv, dense = layers[1], layers[4]
    conv.kernel.assign(np.array([0.75, -0.5], dtype='float32').reshape(1, 1, 1, 2))
    dense.kernel.assign(np.full((8, 1), 0.5, dtype='float32'))
    # fractional bits down to each weight's lowest set bit: the trainable width equals the value's span
    conv.kernel_quantizer.f.assign(np.array([2.0, 1.0], dtype='float32').reshape(1, 1, 1, 2))
    dense.kernel_quantizer.f.assign(np.ones((8, 1), dtype='float32'))
    hgq.calibrate(model, np.random.default_rng(0).normal(size=(512, 5, 5, 1)).astype('float32'))
    return model


@pytest.mark.parametrize('functional', [False, True])
def test_dead_conv_positions_are_left_out_and_pooling_comparators_counted(functional: bool) -> None:
    model = _conv_pool_model(functional)
    _, conv, pool, _, dense = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    live, used = live_masks(model)[conv.name]
    assert live.shape == (5, 5, 2) and not live[4].any() and not live[:, 4].any() and live[:4, :4].all()
    bits_in = conv.input_bits_exact()[..., 0]  # (5, 5)
    assert np.all(bits_in > 0)
    terms = cost_terms(model)
    conv_ebops = bits_in[:4, :4].sum() * (2 + 1)  # weights 0.75 (2 bits) and -0.5 (1 bit) at the 16 live positions
    dense_ebops = float(np.sum(dense.input_bits_exact()) * 1)  # weights 0.5: 1 bit each
    assert terms['ebops'] == pytest.approx(conv_ebops + dense_ebops)
    assert terms['pool_bits'] == pytest.approx(np.sum(pool.input_bits_exact()[:4, :4]))


def test_dead_logic_is_followed_through_merges_and_branches() -> None:
    """Unit 2 of both branches reaches the output only through an all-zero weight: dead, as is input 3."""
    inp = keras.Input((4,))
    q = HQuantize(name='q')(inp)
    a = HDense(3, activation='relu', name='a')(q)
    b = HDense(3, activation='relu', name='b')(q)
    added = HAdd(name='add')([a, b])
    joined = HConcatenate(name='cat')([added, a])  # `a` is also read here, through zero weights only
    model = keras.Model(inp, HDense(1, name='out')(joined))
    layer = {name: model.get_layer(name) for name in ('a', 'b', 'out')}
    out_kernel = np.zeros((6, 1), dtype='float32')
    out_kernel[:2] = 0.5  # only units 0 and 1 of the sum reach the output
    layer['out'].kernel.assign(out_kernel)
    for name in ('a', 'b'):
        kernel = np.full((4, 3), 0.25, dtype='float32')
        kernel[3, :2] = 0.0  # input 3 feeds unit 2 only
        layer[name].kernel.assign(kernel)
    hgq.calibrate(model, np.random.default_rng(0).uniform(-1, 1, size=(256, 4)).astype('float32'))
    masks = live_masks(model)
    for name in ('a', 'b'):
        assert masks[name][0].tolist() == [True, True, False]
        assert masks[name][1].tolist() == [True, True, True, False]  # input 3 only reaches the dead unit
    cat_live, (from_sum, from_a) = masks['cat']
    assert cat_live.tolist() == [True, True, False, False, False, False]
    assert from_sum.tolist() == [True, True, False] and not from_a.any()
    assert masks['q'][0].tolist() == [True, True, True, False]
    # EBOPs of the live logic, counted by hand: dense `a` and `b` over their live units, `out` over its two weights
    counted = 0.0
    for name in ('a', 'b'):
        bits_w = layer[name].kernel_quantizer.exact_bits(layer[name].kernel)
        counted += float(layer[name].input_bits_exact() @ bits_w[:, :2].sum(axis=1))
    counted += float(layer['out'].input_bits_exact()[:2].sum())  # weights 0.5: 1 bit each
    merges = sum(model.get_layer(n).exact_ebops() for n in ('add', 'cat'))
    assert cost_terms(model)['ebops'] == pytest.approx(counted + merges)
    assert cost_terms(model)['ebops'] < hgq.ebops(model)  # everything counted as live would be more


def test_shared_layers_and_layers_first_called_elsewhere_leave_every_element_live() -> None:
    """Only a model whose layers are each called once, and first in it, is followed; others count all as live."""
    shared = HDense(4, name='shared')
    twice_in_a_chain = keras.Sequential([keras.Input((4,)), HQuantize(), shared, shared])
    assert live_masks(twice_in_a_chain) == {}
    inp = keras.Input((4,))
    reused = HDense(4, name='reused')
    twice_in_a_graph = keras.Model(inp, HDense(1)(reused(reused(HQuantize()(inp)))))
    assert live_masks(twice_in_a_graph) == {}
    hidden = HDense(4, name='hidden')
    first = keras.Sequential([keras.Input((4,)), HQuantize(name='q_first'), hidden, HDense(1, name='out_first')])
    inp = keras.Input((4,))
    second = keras.Model(inp, HDense(1)(hidden(HQuantize()(inp))))
    assert sorted(live_masks(first)) == ['hidden', 'out_first', 'q_first']  # its own first calls: followed
    assert live_masks(second) == {}  # `hidden` shows its call in `first`, not this one
    built_by_a_call = keras.Sequential([HQuantize(name='q'), HDense(3, name='a'), HDense(2, name='b')])
    built_by_a_call(np.zeros((2, 5), dtype='float32'))
    assert sorted(live_masks(built_by_a_call)) == ['a', 'b', 'q']


def test_a_saved_and_loaded_sequential_model_keeps_its_dead_logic_analysis(tmp_path) -> None:
    """Loading calls a Sequential model's first layers again for every layer added: the chain is followed anyway."""
    model = _conv_pool_model()
    model.save(tmp_path / 'model.keras')
    loaded = keras.models.load_model(tmp_path / 'model.keras', compile=False)
    masks, loaded_masks = live_masks(model), live_masks(loaded)
    assert sorted(loaded_masks) == sorted(masks) and len(masks) == 5
    for name, (live, used) in masks.items():
        assert np.array_equal(loaded_masks[name][0], live) and np.array_equal(loaded_masks[name][1], used)
    assert cost_terms(loaded) == cost_terms(model)
    saturating = _saturating_model(relu=True)
    saturating.save(tmp_path / 'saturating.keras')
    assert cost_terms(keras.models.load_model(tmp_path / 'saturating.keras')) == cost_terms(saturating)


def test_differentiable_cost_equals_the_estimate_after_calibration_and_trains_a_cnn() -> None:
    model = _conv_pool_model()
    for coefficients in (None, dict.fromkeys(COST_TERMS, 1.0)):
        assert float(lut_cost(model, coefficients)) == pytest.approx(lut_estimate(model, coefficients), rel=1e-6)
    x = np.random.default_rng(1).normal(size=(256, 5, 5, 1)).astype('float32')
    model.compile(keras.optimizers.Adam(1e-2), LUTPenalty('mse', model, 1e-3))  # compiled: masks as tensor ops
    history = model.fit(x, np.zeros((256, 1)), epochs=2, batch_size=64, verbose=0)
    assert np.all(np.isfinite(history.history['loss']))
    hgq.calibrate(model, x)
    # trained weights may not use their lowest fractional bit: the trainable width bounds the span from above
    assert float(lut_cost(model)) >= lut_estimate(model) * (1 - 1e-6) > 0


def test_estimate_is_the_weighted_sum_without_intercept() -> None:
    model = _two_layer_model()
    terms = cost_terms(model)
    assert lut_estimate(model) == pytest.approx(sum(LUT_COEFFICIENTS[t] * terms[t] for t in COST_TERMS))
    assert lut_estimate(model, {'adder_bits': 2.0}) == 2 * terms['adder_bits']
    assert all(c >= 0 for c in LUT_COEFFICIENTS.values()) and any(c > 0 for c in LUT_COEFFICIENTS.values())
    with pytest.raises(ValueError, match='unknown cost terms'):
        lut_estimate(model, {'luts': 1.0})


def test_differentiable_cost_has_gradients_towards_fewer_bits() -> None:
    model = _two_layer_model()
    # the bitwidths' gradients, read where the quantizers route them (their step variables)
    variables = [step_variable(q, q.f) for layer in model.layers for q in layer.quantizers if q.f.trainable]
    with tf.GradientTape() as tape:
        cost = lut_cost(model)
    grads = tape.gradient(cost, variables)
    assert float(cost) > 0
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    # more fractional bits cost more LUTs: the gradient w.r.t. every kernel's f is >= 0 and somewhere > 0
    assert all(np.all(g.numpy() >= 0) for g in grads) and any(np.any(g.numpy() > 0) for g in grads)


def test_lut_penalty_trains_towards_a_cheaper_model() -> None:
    x = np.random.default_rng(0).normal(size=(512, 8)).astype('float32')
    y = (x[:, :3].sum(axis=1) > 0).astype('int64')

    def trained(weight: float) -> float:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), HQuantize(), HDense(16, activation='relu'), HDense(2)])
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(keras.optimizers.Adam(3e-2), LUTPenalty(loss, model, weight))
        model.fit(x, y, epochs=8, batch_size=64, verbose=0)
        hgq.calibrate(model, x)
        return lut_estimate(model)

    assert trained(1e-2) < 0.8 * trained(0.0)


def test_estimate_is_logged_and_summarised_next_to_ebops() -> None:
    from hgq.callbacks import EBOPsLogger
    from hgq.cost import LUTLogger

    model = _two_layer_model()
    model.compile('adam', 'mse')
    x = np.array([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]], dtype='float32')
    history = model.fit(x, np.zeros((3, 1)), epochs=2, verbose=0, callbacks=[EBOPsLogger(), LUTLogger()])
    assert len(history.history['lut_estimate']) == 2 and len(history.history['ebops']) == 2
    lines = []
    hgq.summary(model, print_fn=lines.append)
    assert lines[1] == f'Estimated LUTs (hgq.cost): {lut_estimate(model):,.0f}'
