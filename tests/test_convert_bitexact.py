"""Bit-exactness of the converted firmware: hls4ml C simulation (g++) against ``model.predict``, value for value.

Every model gets randomised bitwidths (fractional bits from -1 up, some elements pruned to zero width, SAT-mode
quantizers with random integer bits), is calibrated on 10,000 samples and is then run on those samples and on the
same samples doubled, which overflow the calibrated ranges (WRAP quantizers wrap around, SAT ones saturate).
Each C simulation costs one g++ build (10-40 s on 2 cores), so one model covers several layers, intermediate
tensors are extra outputs where that helps, and every compiled model is shared by the tests of its module fixture.

Matrix (layer groups x backend x io_type x strategy):

============================================  ======  ===========  =======================
model                                         backend io_type      strategy
============================================  ======  ===========  =======================
mlp: Quantize, Dense, DenseBatchNorm, BN      Vitis   io_parallel  Latency (+ save/load)
modes: SAT/SAT_SYM, all rounding modes,       Vivado  io_parallel  Latency
consecutive and zero-width quantizers
merge: Add(3), Subtract, Multiply, Concat(3)  Vitis   io_parallel  Latency
cnn: Conv1D/2D (+BN), all pooling layers      Vitis   io_parallel  Latency
cnn_stream2d: Conv2D (+BN), pooling, Dense    Vitis   io_stream    Latency
cnn_stream1d: Conv1D (+BN), pooling, merges   Vivado  io_stream    Latency
da: Conv2D, Dense                             Vitis   io_parallel  distributed_arithmetic
da_stream: Conv1D, Dense                      Vivado  io_stream    distributed_arithmetic
============================================  ======  ===========  =======================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

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
    HLayer,
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSubtract,
)
from hgq.quantizer import ActivationQuantizer

pytestmark = pytest.mark.slow

N_SAMPLES = 10_000
CHANNEL = {'granularity': 'channel'}


def randomize_bits(model: keras.Model, seed: int, act_f=(-1, 5), weight_f=(1, 4), prune=0.1, sat_i=(0, 3)) -> None:
    """Random integer bitwidths: activation ``f`` in ``act_f`` (negative included), weight ``f`` in ``weight_f``,
    a fraction ``prune`` of the elements of multi-element quantizers pruned, SAT-mode integer bits in ``sat_i``.

    Quantizers with a non-trainable ``f`` keep theirs. Totals stay small enough that Keras' float32 arithmetic is
    exact.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, HLayer):
            continue
        for q in layer.quantizers:
            if not q.f.trainable:
                continue
            low, high = act_f if isinstance(q, ActivationQuantizer) else weight_f
            f = rng.integers(low, high + 1, q.f.shape).astype('float32')
            if q.f.shape.num_elements() > 1:
                f = np.where(rng.random(q.f.shape) < prune, -16.0, f)
            q.f.assign(f)
            if isinstance(q, ActivationQuantizer) and not q.tracks_range:
                q.i.assign(rng.integers(sat_i[0], sat_i[1] + 1, q.i.shape).astype('float32'))


def _inputs(model: keras.Model, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(N_SAMPLES, *t.shape[1:])).astype('float32') for t in model.inputs]


def _outputs(values: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in values] if isinstance(values, list | tuple) else [np.asarray(values)]


class Converted:
    """A calibrated model, its compiled hls4ml model and the test inputs (calibration data and its double)."""

    def __init__(self, model: keras.Model, output_dir: Path, seed: int, **settings: Any) -> None:
        self.model = model
        randomize_bits(model, seed)
        x = _inputs(model, seed + 1)
        hgq.calibrate(model, x)
        self.x = [np.concatenate([v, 2 * v]) for v in x]
        self.hls_model = hgq.to_hls(model, output_dir, **settings)
        self.hls_model.compile()
        x_in = self.x if len(self.x) > 1 else self.x[0]
        self._keras_outputs = _outputs(self.model.predict(x_in, batch_size=4096, verbose=0))

    def keras_outputs(self) -> list[np.ndarray]:
        return self._keras_outputs

    def hls_outputs(self, hls_model: Any = None) -> list[np.ndarray]:
        x = [v.astype(np.float64) for v in self.x]
        outputs = _outputs((hls_model or self.hls_model).predict(x if len(x) > 1 else x[0]))
        return [h.reshape(k.shape) for h, k in zip(outputs, self.keras_outputs(), strict=True)]


def assert_bit_exact(case: Converted) -> None:
    keras_outputs, hls_outputs = case.keras_outputs(), case.hls_outputs()
    assert len(keras_outputs) == len(hls_outputs)
    for n, (k, h) in enumerate(zip(keras_outputs, hls_outputs, strict=True)):
        assert k.shape[0] == 2 * N_SAMPLES
        mismatches = int(np.sum(k != h))
        assert np.array_equal(k, h), f'output {n}: {mismatches} of {k.size} values differ'


def assert_informative(case: Converted, min_nonzero: float = 0.2) -> None:
    """The main output varies with the input (a test of constant outputs would prove little)."""
    flat = case.keras_outputs()[0].reshape(2 * N_SAMPLES, -1)
    assert np.mean(flat != 0) > min_nonzero
    assert len(np.unique(flat)) > 10


def _wrap_exercised(case: Converted) -> None:
    """The doubled inputs overflow at least one WRAP quantizer (else the WRAP path would be untested)."""
    first = next(q for layer in case.model.layers if isinstance(layer, HLayer) for q in layer.activation_quantizers)
    k, i, f = first.kif()
    upper = 2.0**i - 2.0**-f
    x = case.x[0][N_SAMPLES:]
    assert np.any(x > upper) or np.any(x < -(2.0**i) * k)


def _fixture(build: Callable[[], keras.Model], seed: int, **settings: Any):
    @pytest.fixture(scope='module')
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Converted:
        keras.utils.set_random_seed(seed)
        return Converted(build(), tmp_path_factory.mktemp(build.__name__), seed, **settings)

    return fixture


# -- models ------------------------------------------------------------------------------------------------------------


def mlp() -> keras.Model:
    inp = keras.Input((16,))
    h = HQuantize()(inp)
    h = HDense(16, activation='relu')(h)
    h = HDenseBatchNorm(12, activation='relu')(h)
    bn = HBatchNormalization()(h)
    return keras.Model(inp, [HDense(5)(bn), bn])


def modes() -> keras.Model:
    tensor = {'granularity': 'tensor'}
    inp = keras.Input((12,))
    h = HQuantize(input_quantizer={**tensor, 'overflow_mode': 'SAT_SYM', 'round_mode': 'TRN'})(inp)
    h = HDense(10, activation='relu', input_quantizer=tensor)(h)  # consecutive per-tensor quantizers
    h = HDense(8, input_quantizer={'overflow_mode': 'SAT', 'round_mode': 'TRN'})(h)
    h = keras.layers.Reshape((2, 4))(h)
    h = HQuantize(input_quantizer={**CHANNEL, 'round_mode': 'RND_CONV'})(h)
    h = keras.layers.Flatten()(h)
    h = HDense(6, input_quantizer={'round_mode': 'RND_ZERO', 'overflow_mode': 'SAT_SYM'})(h)
    h = HDense(5, input_quantizer={**tensor, 'overflow_mode': 'SAT', 'round_mode': 'RND_INF'})(h)
    main = HDense(3, input_quantizer={'round_mode': 'TRN_ZERO'})(h)
    zero_width = {**tensor, 'f_init': -20.0, 'f_trainable': False}  # every element 0 bits wide
    zero = HDense(2, input_quantizer=zero_width, name='zero_width_input')(h)
    return keras.Model(inp, [main, zero, HDense(2, input_quantizer={'round_mode': 'RND_MIN_INF'})(h)])


def merge() -> keras.Model:
    a, b, c = keras.Input((6,)), keras.Input((6,)), keras.Input((4,))
    d = HDense(6)(a)
    s = HAdd()([d, b, HDense(6)(c)])
    m = HMultiply()([s, b])
    sub = HSubtract()([m, d])
    cat = HConcatenate()([sub, a, c])
    cat2 = HConcatenate(axis=1)([keras.layers.Reshape((2, 3))(sub), keras.layers.Reshape((2, 3))(m)])
    return keras.Model([a, b, c], [HDense(3)(cat), cat2])


def cnn() -> keras.Model:
    img, seq = keras.Input((10, 10, 2)), keras.Input((16, 3))
    h = HQuantize()(img)
    h = HConv2D(4, 3, activation='relu')(h)
    h = HMaxPooling2D(3, strides=2, padding='same')(h)
    h = HConv2DBatchNorm(3, 3, padding='same', activation='relu')(h)
    h = HAveragePooling2D(2)(h)
    g = HGlobalAveragePooling2D(keepdims=True)(h)
    g = HConv2D(2, 1)(g)
    s = HConv1D(4, 3, strides=2, activation='relu')(seq)
    s = HMaxPooling1D(2, padding='same')(s)
    s = HConv1DBatchNorm(3, 2, padding='same')(s)
    s = HAveragePooling1D(2)(s)
    t = HGlobalAveragePooling1D()(HConv1D(2, 1)(seq))
    flat = HConcatenate()([keras.layers.Flatten()(h), keras.layers.Flatten()(s), t])
    return keras.Model([img, seq], [HDense(5)(flat), keras.layers.Flatten()(g)])


def cnn_stream2d() -> keras.Model:
    inp = keras.Input((10, 10, 2))
    h = HQuantize()(inp)  # per element: formats switch with the pixel
    h = HConv2D(4, 3, activation='relu', input_quantizer=CHANNEL)(h)
    h = HMaxPooling2D(2, input_quantizer=CHANNEL)(h)
    h = HConv2DBatchNorm(3, 3, padding='same', activation='relu', input_quantizer=CHANNEL)(h)
    h = HAveragePooling2D(2, input_quantizer={'granularity': 'tensor'})(h)
    h = keras.layers.Flatten()(h)
    h = HDense(8, activation='relu')(h)  # per element after Flatten: packs of 3 gathered into one
    return keras.Model(inp, HDense(5, input_quantizer=CHANNEL)(h))


def cnn_stream1d() -> keras.Model:
    inp = keras.Input((16, 3))
    h = HQuantize(input_quantizer=CHANNEL)(inp)
    a = HConv1D(4, 3, padding='same', activation='relu', input_quantizer=CHANNEL)(h)
    b = HConv1DBatchNorm(4, 1, input_quantizer=CHANNEL)(h)
    s = HAdd(input_quantizer=CHANNEL)([a, b])
    m = HMultiply(input_quantizer=CHANNEL)([s, b])
    c = HConcatenate(input_quantizer=CHANNEL)([m, a])
    c = HMaxPooling1D(2, input_quantizer=CHANNEL)(c)
    c = HAveragePooling1D(2, input_quantizer=CHANNEL)(c)
    c = HConv1D(3, 2, strides=2, input_quantizer=CHANNEL)(c)
    return keras.Model(inp, HGlobalAveragePooling1D(input_quantizer=CHANNEL)(c))


def da() -> keras.Model:
    inp = keras.Input((8, 8, 2))
    h = HQuantize()(inp)
    h = HConv2D(4, 3, activation='relu')(h)
    h = HConv2D(3, 3, input_quantizer=CHANNEL)(h)
    h = keras.layers.Flatten()(h)
    h = HDense(8, activation='relu')(h)
    return keras.Model(inp, HDense(4)(h))


def da_stream() -> keras.Model:
    inp = keras.Input((12, 2))
    h = HQuantize(input_quantizer=CHANNEL)(inp)
    h = HConv1D(4, 3, activation='relu', input_quantizer=CHANNEL)(h)
    h = HConv1D(3, 3, input_quantizer=CHANNEL)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, HDense(4)(h))


mlp_case = _fixture(mlp, 10, backend='Vitis')
modes_case = _fixture(modes, 20, backend='Vivado')
merge_case = _fixture(merge, 30, backend='Vitis')
cnn_case = _fixture(cnn, 40, backend='Vitis')
cnn_stream2d_case = _fixture(cnn_stream2d, 50, backend='Vitis', io_type='io_stream')
cnn_stream1d_case = _fixture(cnn_stream1d, 60, backend='Vivado', io_type='io_stream')
da_case = _fixture(da, 70, backend='Vitis', strategy='distributed_arithmetic')
da_stream_case = _fixture(da_stream, 81, backend='Vivado', io_type='io_stream', strategy='distributed_arithmetic')

ALL_CASES = (
    'mlp_case',
    'modes_case',
    'merge_case',
    'cnn_case',
    'cnn_stream2d_case',
    'cnn_stream1d_case',
    'da_case',
    'da_stream_case',
)


# -- tests -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('case_name', ALL_CASES)
def test_bit_exact(case_name: str, request: pytest.FixtureRequest) -> None:
    case = request.getfixturevalue(case_name)
    assert_informative(case)
    assert_bit_exact(case)


@pytest.mark.parametrize('case_name', ('mlp_case', 'cnn_stream2d_case', 'da_case'))
def test_doubled_inputs_overflow_calibrated_range(case_name: str, request: pytest.FixtureRequest) -> None:
    _wrap_exercised(request.getfixturevalue(case_name))


def test_randomised_bits_prune_and_go_negative(mlp_case: Converted) -> None:
    layers = [layer for layer in mlp_case.model.layers if isinstance(layer, HLayer)]
    kifs = [q.kif() for layer in layers for q in layer.activation_quantizers]
    assert any(np.any(k + i + f <= 0) for k, i, f in kifs), 'some activation elements must be pruned'
    assert any(np.any((f < 0) & (k + i + f > 0)) for k, i, f in kifs), 'some live elements must have f < 0'
    relu_fed = mlp_case.model.layers[3].input_quantizer.kif()[0]
    assert np.all(relu_fed == 0), 'inputs after relu are unsigned'


def test_zero_width_quantizer_outputs_bias_only(modes_case: Converted) -> None:
    layer = modes_case.model.get_layer('zero_width_input')
    k, i, f = layer.input_quantizer.kif()
    assert np.all(k + i + f <= 0)
    zero_out = modes_case.hls_outputs()[1]
    bias = keras.ops.convert_to_numpy(layer.qbias)
    assert np.array_equal(zero_out, np.broadcast_to(bias, zero_out.shape))


def test_stream_quantizers_use_our_header(cnn_stream2d_case: Converted) -> None:
    firmware = Path(cnn_stream2d_case.hls_model.config.get_output_dir()) / 'firmware'
    assert (firmware / 'nnet_utils' / 'hgq_quantizer_stream.h').is_file()
    top = (firmware / 'myproject.cpp').read_text()
    assert top.count('hgq::quantize_stream<') >= 4
    assert 'switch (p)' in (firmware / 'parameters.h').read_text()


def test_save_load_convert_gives_identical_firmware(mlp_case: Converted, tmp_path: Path) -> None:
    path = tmp_path / 'mlp.keras'
    mlp_case.model.save(path)
    loaded = keras.saving.load_model(path)
    hls_model = hgq.to_hls(loaded, tmp_path / 'prj', backend='Vitis')
    hls_model.compile()
    for reloaded, original in zip(mlp_case.hls_outputs(hls_model), mlp_case.hls_outputs(), strict=True):
        assert np.array_equal(reloaded, original)
    assert hgq.ebops(loaded) == hgq.ebops(mlp_case.model)
