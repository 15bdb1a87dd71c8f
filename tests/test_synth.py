"""``hgq.synth`` / ``hgq synth``: traced logic, real Verilog simulation (iverilog) and real synthesis (yosys).

Models get random bitwidths (negative fractional bits, pruned elements) and are calibrated on normal samples;
the check inputs are half inside and half far beyond the calibrated range, so WRAP quantizers overflow in every
layer. The Verilog must equal ``model.predict`` with ``np.array_equal``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import hgq
import hgq.rtl as rtl
from hgq.layers import (
    HActivation,
    HAdd,
    HAveragePooling2D,
    HBatchNormalization,
    HConcatenate,
    HConv1D,
    HConv2D,
    HConv2DBatchNorm,
    HDense,
    HDenseBatchNorm,
    HGlobalAveragePooling1D,
    HLayer,
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
)
from hgq.quantizer import ActivationQuantizer

pytestmark = pytest.mark.skipif(
    shutil.which('yosys') is None or shutil.which('iverilog') is None,
    reason='needs yosys and iverilog (apt-get install yosys iverilog)',
)

N_CHECK = 2000


def randomize_bits(model: keras.Model, seed: int, act_f=(-1, 5), weight_f=(1, 4), prune=0.1) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, HLayer):
            continue
        for q in layer.quantizers:
            low, high = act_f if isinstance(q, ActivationQuantizer) else weight_f
            f = rng.integers(low, high + 1, q.f.shape).astype('float32')
            if q.f.shape.num_elements() > 1:
                f = np.where(rng.random(q.f.shape) < prune, -16.0, f)
            q.f.assign(f)
            if isinstance(q, ActivationQuantizer) and not q.tracks_range:
                q.i.assign(rng.integers(0, 3, q.i.shape).astype('float32'))


def _calibrated(model: keras.Model, seed: int = 0) -> keras.Model:
    randomize_bits(model, seed)
    rng = np.random.default_rng(seed + 1)
    hgq.calibrate(model, rng.normal(size=(4000, *model.inputs[0].shape[1:])).astype('float32'))
    return model


def _mlp() -> keras.Model:
    return keras.Sequential([
        keras.Input((8,)),
        HQuantize(),
        HDense(12, activation='relu'),
        HDenseBatchNorm(8, activation='relu'),
        HDense(4),
    ])  # fmt: skip


def _assert_exact_and_informative(model: keras.Model, traced, x: np.ndarray, y_rtl: np.ndarray) -> None:
    y = model.predict(x, verbose=0)
    assert y_rtl.shape == y.shape
    assert np.array_equal(y_rtl, y), f'{np.sum(y_rtl != y)} of {y.size} values differ'
    assert len(np.unique(y)) > 20 and np.mean(y != 0) > 0.2


@pytest.fixture(scope='module')
def mlp_result(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, dict, Path]:
    model = _calibrated(_mlp())
    out = tmp_path_factory.mktemp('mlp')
    return model, hgq.synth(model, out, check=N_CHECK, verbose=False), out


def test_synth_writes_rtl_checks_it_and_counts_luts(mlp_result) -> None:
    model, result, out = mlp_result
    assert result['mismatches'] == 0 and result['n_checked'] == N_CHECK
    assert json.loads((out / 'synth.json').read_text()) == result
    assert result['lut'] > 20 and result['carry'] > 0 and result['dsp'] == 0 and result['ff'] == 0
    assert result['depth'] > 0 and result['estimate_lut'] > 0
    assert result['ebops'] == pytest.approx(hgq.ebops(model))
    assert result['part_family'] == 'xcup' and 'synth_xilinx' in result['synthesizer']
    assert result['seconds'] >= sum(result['step_seconds'].values()) > 0
    assert (out / 'rtl' / 'src' / 'hgq_model_wrapper.v').is_file()
    # yosys and da4ml agree on the order of magnitude (the tracer's estimate is not the measurement)
    assert 0.5 < result['lut'] / result['estimate_lut'] < 2


def test_published_output_has_no_partial_files_and_a_relocatable_yosys_script(mlp_result) -> None:
    out = mlp_result[2]
    assert sorted(p.name for p in out.iterdir()) == ['rtl', 'synth.json']
    script = (out / 'rtl' / 'yosys' / 'synth.ys').read_text()
    assert '.partial' not in script and str(out) not in script  # sources relative to the script


def test_probe_inputs_overflow_the_calibrated_range(mlp_result) -> None:
    model = mlp_result[0]
    x = rtl.probe_inputs(model, 1000)
    q = model.layers[0].input_quantizer
    k, i, f = q.kif()
    inside, beyond = x[:500], x[500:]
    assert np.all(inside >= keras.ops.convert_to_numpy(q.vmin)) and np.all(inside <= keras.ops.convert_to_numpy(q.vmax))
    assert np.mean((beyond > 2.0**i) | (beyond < -(2.0**i) * k)) > 0.3


def _cnn() -> keras.Model:
    """Conv 1D/2D (same/valid, strides, batch norm), every pooling, every merge, relu, reshapes: one output."""
    inp = keras.Input((6, 6, 2))
    h = HQuantize()(inp)
    h = HConv2D(3, 3, padding='same', activation='relu')(h)
    a = HMaxPooling2D(2, padding='same', strides=1)(h)
    b = HConv2DBatchNorm(3, 2, strides=2)(h)
    a = HAveragePooling2D(2)(a)
    s = HAdd()([keras.layers.Flatten()(a), keras.layers.Flatten()(b)])
    m = HMultiply()([s, HSubtract()([s, keras.layers.Flatten()(b)])])
    cat = HConcatenate()([m, HBatchNormalization()(s)])
    seq = keras.layers.Reshape((9, 6))(HActivation('relu')(cat))
    c = HConv1D(4, 2, activation='relu')(seq)  # 8 positions: a power of two for the global average
    c = HGlobalAveragePooling1D()(HMaxPooling1D(2, strides=1, padding='same')(c))
    return keras.Model(inp, HDense(3)(HConcatenate()([c, keras.layers.Flatten()(a)])))


def test_conv_pool_merge_layers_simulate_bit_exact(tmp_path: Path) -> None:
    model = _calibrated(_cnn(), seed=3)
    traced = rtl.trace_model(model)
    x = rtl.probe_inputs(model, 1000, seed=1)  # the slowest simulation of this file
    rtl.verilog.write_verilog(traced, tmp_path, 'cnn')
    y_rtl = rtl.verilog.simulate(traced, tmp_path, 'cnn', x)
    _assert_exact_and_informative(model, traced, x, y_rtl)
    assert np.array_equal(traced.predict(x), y_rtl)  # da4ml's interpreter agrees with the Verilog


def test_saturating_truncating_first_quantizer_and_loaded_functional_model(tmp_path: Path) -> None:
    inp = keras.Input((10,))
    h = HQuantize(input_quantizer={'overflow_mode': 'SAT', 'round_mode': 'TRN'})(inp)
    h = HDense(6, activation='relu', input_quantizer={'granularity': 'channel', 'overflow_mode': 'SAT_SYM'})(h)
    model = _calibrated(keras.Model(inp, HDense(3, input_quantizer={'round_mode': 'TRN'})(h)), seed=5)
    model.save(tmp_path / 'm.keras')
    loaded = keras.models.load_model(tmp_path / 'm.keras')
    traced = rtl.trace_model(loaded)
    assert set(traced.input_overflow) == {'SAT'}
    x = rtl.probe_inputs(loaded, N_CHECK, seed=2)
    rtl.verilog.write_verilog(traced, tmp_path / 'rtl', 'sat')
    _assert_exact_and_informative(loaded, traced, x, rtl.verilog.simulate(traced, tmp_path / 'rtl', 'sat', x))


@pytest.mark.parametrize('first_overflow', ['SAT', 'WRAP'])
def test_ties_to_even_rounding_is_traced_exactly(tmp_path: Path, first_overflow: str) -> None:
    """RND_CONV (QKeras's rounding) at the model input (ports with a sticky bit) and inside (on exact sums)."""
    inp = keras.Input((6,))
    h = HQuantize(input_quantizer={'overflow_mode': first_overflow, 'round_mode': 'RND_CONV', 'signed': False})(inp)
    h = HDense(5, activation='relu', input_quantizer={'overflow_mode': 'SAT', 'round_mode': 'RND_CONV'})(h)
    model = _calibrated(keras.Model(inp, HDense(3, input_quantizer={'round_mode': 'RND_CONV'})(h)), seed=7)
    rng = np.random.default_rng(3)
    grid = rng.integers(-256, 256, size=(1000, 6)).astype('float32') / 64  # exact halves of every f <= 5
    x = np.concatenate([rtl.probe_inputs(model, 1000, seed=4), grid, grid + 2.0**-12])  # ties and just above
    first = model.layers[1].input_quantizer
    k, i, f = first.kif()
    half_up = hgq.fixed_point.quantize(grid, k, i, f, 'RND', first.overflow_mode)
    to_even = hgq.fixed_point.quantize(grid, k, i, f, 'RND_CONV', first.overflow_mode)
    assert np.sum(half_up != to_even) > 20  # the inputs hold ties that the two modes round apart
    traced = rtl.trace_model(model)
    assert traced.input_sticky.all()
    assert np.array_equal(traced.predict(x), model.predict(x, verbose=0))
    rtl.verilog.write_verilog(traced, tmp_path / 'rtl', 'conv')
    sample = x[::5]
    _assert_exact_and_informative(model, traced, sample, rtl.verilog.simulate(traced, tmp_path / 'rtl', 'conv', sample))


@pytest.mark.parametrize(
    ('layer', 'message'),
    [
        (lambda: HActivation('tanh', name='tanh_table'), "'tanh_table' (HActivation('tanh'))"),
        (lambda: HSoftmax(name='probs'), "'probs' (HSoftmax)"),
        (lambda: HDense(3, input_quantizer={'round_mode': 'RND_ZERO'}, name='zero_round'), "'zero_round'"),
        (lambda: keras.layers.LayerNormalization(name='ln'), "'ln' (LayerNormalization)"),
    ],
)
def test_layer_the_tracer_cannot_express_is_named_before_any_work(tmp_path: Path, layer, message: str) -> None:
    model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(4), layer()])
    hgq.calibrate(model, np.random.default_rng(0).normal(size=(64, 4)).astype('float32'))
    with pytest.raises(rtl.TraceError, match=message.replace('(', r'\(').replace(')', r'\)')):
        hgq.synth(model, tmp_path / 'out', verbose=False)
    assert not (tmp_path / 'out').exists()


def test_uncalibrated_model_is_refused(tmp_path: Path) -> None:
    model = _mlp()
    with pytest.raises(rtl.TraceError, match='not calibrated'):
        hgq.synth(model, tmp_path, verbose=False)


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob('*')) if p.is_file()}


def test_yosys_failing_after_the_check_leaves_the_output_as_it_was(mlp_result, tmp_path: Path) -> None:
    model, _, done = mlp_result
    previous = tmp_path / 'previous'
    shutil.copytree(done, previous)
    before = _tree(previous)
    for out in (previous, tmp_path / 'new' / 'deeper'):
        # real yosys refuses the family only after tracing, Verilog and simulation have written their files
        with pytest.raises(rtl.SynthesisError, match="Invalid Xilinx -family setting: 'no_such_family'"):
            hgq.synth(model, out, check=200, part_family='no_such_family', verbose=False)
    assert _tree(previous) == before and not list(previous.glob('.*'))
    assert not (tmp_path / 'new').exists()


def test_layer_refused_while_tracing_writes_nothing(tmp_path: Path) -> None:
    inp = keras.Input((2, 3))
    flat = keras.layers.Flatten()(inp)  # a saturating quantizer behind Flatten: refused during the trace itself
    model = keras.Model(inp, HDense(2)(HQuantize(input_quantizer={'overflow_mode': 'SAT'}, name='late_sat')(flat)))
    with pytest.raises(rtl.TraceError, match="'late_sat'.*add an HQuantize"):
        hgq.synth(model, tmp_path / 'out', check=False, allow_uncalibrated=True, verbose=False)
    assert not (tmp_path / 'out').exists()


def test_count_mismatches_counts_samples_with_any_differing_value() -> None:
    y = np.arange(12, dtype=np.float64).reshape(4, 3)
    z = y.copy()
    z[1, 2] += 2.0**-20  # any difference counts, however small
    z[3] = -z[3]
    assert rtl.count_mismatches(y, y) == 0
    assert rtl.count_mismatches(z, y) == 2


# -- command line ---------------------------------------------------------------------------------------------------


def test_cli_synth_json_and_exit_codes(mlp_result, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hgq_cli import main

    model = mlp_result[0]
    model.save(tmp_path / 'mlp.keras')
    x = rtl.probe_inputs(model, 300, seed=9)
    np.save(tmp_path / 'x.npy', x)
    args = [str(tmp_path / 'mlp.keras'), '-o', str(tmp_path / 'out'), '--check', str(tmp_path / 'x.npy')]
    status = main(['synth', *args, '--json', '--no-yosys'])
    printed = json.loads(capsys.readouterr().out)
    assert status == 0 and printed['mismatches'] == 0 and printed['n_checked'] == 300
    assert printed == json.loads((tmp_path / 'out' / 'synth.json').read_text())

    tanh = keras.Sequential([keras.Input((4,)), HQuantize(), HActivation('tanh', name='tanh_table')])
    hgq.calibrate(tanh, x[:, :4])
    tanh.save(tmp_path / 'tanh.keras')
    assert main(['synth', str(tmp_path / 'tanh.keras'), '-o', str(tmp_path / 'out2')]) == 2
    assert "'tanh_table'" in capsys.readouterr().err


def test_missing_yosys_says_how_to_install_it(mlp_result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = mlp_result[0]
    monkeypatch.setenv('PATH', str(tmp_path))  # no executables at all
    with pytest.raises(rtl.ToolNotFoundError, match='apt-get install yosys'):
        hgq.synth(model, tmp_path / 'out', check=False, verbose=False)
    with pytest.raises(rtl.ToolNotFoundError, match='apt-get install iverilog'):
        hgq.synth(model, tmp_path / 'out', run_yosys=False, verbose=False)
    assert not (tmp_path / 'out').exists()  # refused before anything was written


def test_report_shows_synth_json(mlp_result, capsys: pytest.CaptureFixture) -> None:
    from hgq_cli import main

    _, result, out = mlp_result
    assert main(['report', str(out)]) == 0
    table = capsys.readouterr().out
    lut_row = next(line for line in table.splitlines() if line.startswith('LUT '))
    assert lut_row.split()[-1] == str(result['lut'])
    assert f'Verilog mismatches 0/{N_CHECK}' in table


def test_run_with_export_synth_adds_lut_columns_and_plot(tmp_path: Path) -> None:
    from hgq.run import run

    config = {
        'name': 'digits_synth',
        'dataset': {'name': 'digits'},
        'model': {
            'layers': [
                {'type': 'HQuantize'},
                {'type': 'HDense', 'units': 6, 'activation': 'relu'},
                {'type': 'HDense', 'units': 10},
            ]
        },  # fmt: skip
        'training': {'epochs': 2, 'batch_size': 64, 'beta': {'schedule': [[0, 1e-4], [2, 1e-3]]}},
        'export': {'n_models': 1, 'n_test': 200, 'synth': True},
    }
    results = run(config, tmp_path / 'run', convert=False, verbose=0)
    entry = results['models'][0]
    assert entry['lut'] > 0 and entry['synth']['mismatches'] == 0 and entry['synth']['n_checked'] == 200
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert saved['models'][0]['lut'] == entry['lut']
    report = (tmp_path / 'run' / 'report.md').read_text()
    assert 'LUT (yosys)' in report and f'{entry["lut"]:,}' in report
    assert (tmp_path / 'run' / 'pareto-lut.png').stat().st_size > 1000


def _float32_inexact_model() -> keras.Model:
    """Saturating quantizers (no calibration) with formats too wide for float32: 21-bit inputs x 13-bit weights."""
    keras.utils.set_random_seed(4)
    sat = {'overflow_mode': 'SAT', 'round_mode': 'TRN'}
    model = keras.Sequential([keras.Input((8,)), HQuantize(input_quantizer=sat), HDense(4, input_quantizer=sat)])
    for layer in model.layers:
        for q in layer.quantizers:
            q.f.assign(np.full(q.f.shape, 14.0 if isinstance(q, ActivationQuantizer) else 12.0, 'float32'))
            if isinstance(q, ActivationQuantizer):
                q.i.assign(np.full(q.i.shape, 6.0, 'float32'))
    return model


def test_cli_exit_1_when_keras_differs_from_the_verilog(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A model Keras computes inexactly (float32): the Verilog is right, Keras is not; ``hgq synth`` must say so."""
    from hgq.exactness import float32_problems
    from hgq_cli import main

    model = _float32_inexact_model()
    assert float32_problems(model)  # the model is outside float32 exactness by its formats
    model.save(tmp_path / 'wide.keras')
    x = rtl.probe_inputs(model, 300, seed=3)
    np.save(tmp_path / 'x.npy', x)
    args = [str(tmp_path / 'wide.keras'), '-o', str(tmp_path / 'out'), '--check', str(tmp_path / 'x.npy')]
    status = main(['synth', *args, '--no-yosys'])
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / 'out' / 'synth.json').read_text())
    assert status == 1 and result['n_checked'] == 300 and result['mismatches'] > 100
    assert 'inexactly in float32' in printed and f'mismatches {result["mismatches"]}/300' in printed

    # the Verilog computes the exact sum (float64 holds these 34-bit sums exactly); Keras's float32 does not
    dense = model.layers[1]
    xq = dense.input_quantizer(model.layers[0](x)).numpy().astype(np.float64)
    exact = xq @ dense.qkernel.numpy().astype(np.float64) + dense.qbias.numpy().astype(np.float64)
    traced = rtl.trace_model(model)
    rtl.verilog.write_verilog(traced, tmp_path / 'rtl', 'wide')
    y_rtl = rtl.verilog.simulate(traced, tmp_path / 'rtl', 'wide', x)
    assert np.array_equal(y_rtl, exact)
    assert rtl.count_mismatches(model.predict(x, verbose=0), exact) == result['mismatches']


def test_cli_names_a_model_file_saved_with_older_quantizer_variables(capsys: pytest.CaptureFixture) -> None:
    from hgq_cli import main

    old = Path(__file__).parent / 'fixtures' / 'quantizer_4_variables.keras'
    assert main(['synth', str(old), '-o', 'never_written']) == 2
    err = capsys.readouterr().err
    assert f'model file {old} was saved by another hgq version' in err
    assert "quantizer 'h_quantize_iq'" in err and 'range_started' in err and '4 variables' in err
    assert not Path('never_written').exists()
