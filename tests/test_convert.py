"""Conversion without C simulation: the IR our handlers emit, our hls4ml passes, ``to_hls`` checks and errors.

The C-simulation (g++) bit-exactness tests are in ``test_convert_bitexact.py``.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import hls4ml
import keras
import numpy as np
import pytest
from hls4ml.backends import get_backend
from hls4ml.converters import parse_keras_v3_model

import hgq
from hgq.convert import ConversionError
from hgq.convert.handlers import kbi_masks, quantizer_config
from hgq.convert.hls_backend import (
    HEADERS,
    HGQFixedPointQuantizer,
    HGQStreamQuantizer,
    header_path,
    quantize_body,
)
from hgq.layers import HConv2D, HDense, HMaxPooling2D, HQuantize
from hgq.quantizer import ActivationQuantizer

RNG = np.random.default_rng(0)


def _mlp(**dense_kwargs) -> keras.Model:
    model = keras.Sequential(
        [keras.Input((6,)), HQuantize(), HDense(4, activation='relu', **dense_kwargs), HDense(3)], name='mlp'
    )
    hgq.calibrate(model, RNG.normal(size=(256, 6)).astype('float32'))
    return model


def _classes(hls_model) -> list[str]:
    return [node.class_name for node in hls_model.graph.values()]


# -- handlers ----------------------------------------------------------------------------------------------------------


def test_handlers_emit_quantizer_layer_and_relu_with_quantized_weights() -> None:
    model = _mlp()
    layers, inputs, outputs, _ = parse_keras_v3_model(model, allow_da_fallback=False, allow_v2_fallback=False)
    classes = [conf['class_name'] for conf in layers]
    quantizer = 'HGQFixedPointQuantizer'
    assert classes == ['InputLayer', quantizer, quantizer, 'Dense', 'Activation', quantizer, 'Dense']
    dense = next(conf for conf in layers if conf['name'] == model.layers[1].name)
    assert np.array_equal(dense['weight_data'], keras.ops.convert_to_numpy(model.layers[1].qkernel))
    assert np.array_equal(dense['bias_data'], keras.ops.convert_to_numpy(model.layers[1].qbias))
    iq = next(conf for conf in layers if conf['name'] == model.layers[1].input_quantizer.name)
    assert iq['output_keras_tensor_names'] == dense['input_keras_tensor_names']
    relu = next(conf for conf in layers if conf['class_name'] == 'Activation')
    assert relu['activation'] == 'relu' and relu['input_keras_tensor_names'] == dense['output_keras_tensor_names']


def test_last_dense_layer_ends_the_model() -> None:
    model = _mlp()
    layers, _, outputs, _ = parse_keras_v3_model(model, allow_da_fallback=False, allow_v2_fallback=False)
    assert [conf['class_name'] for conf in layers][-2:] == ['HGQFixedPointQuantizer', 'Dense']
    assert outputs == [model.layers[-1].name]


def test_masks_are_k_width_and_integer_bits_with_pruned_elements_zero() -> None:
    q = ActivationQuantizer(overflow_mode='SAT', i_init=2, name='q')
    q.build((None, 2, 3))
    q.f.assign(np.array([[1, -2, -5], [0, 3, -3]], dtype='float32'))
    k, width, integer = kbi_masks(q)
    assert k.shape == width.shape == integer.shape == (1, 2, 3)
    assert width.tolist() == [[[4, 1, 0], [3, 6, 0]]]  # 1 + 2 + f, pruned (<= 0) to 0
    assert integer.tolist() == [[[3, 3, 0], [3, 3, 0]]]
    assert k.tolist() == [[[1, 1, 0], [1, 1, 0]]]


def test_per_channel_masks_are_broadcast_to_the_tensor() -> None:
    q = ActivationQuantizer(granularity='channel', name='q')
    q.build((None, 4, 4, 3))
    q.f.assign(np.array([[[1, 2, 3]]], dtype='float32'))
    width = kbi_masks(q)[1]
    assert width.shape == (1, 4, 4, 3)
    assert np.all(width == width[:, :1, :1, :])


def test_all_zero_width_quantizer_is_exported_as_wrap_trn() -> None:
    q = ActivationQuantizer(granularity='tensor', overflow_mode='SAT', round_mode='RND_CONV', f_init=-40, name='q')
    q.build((None, 5))
    conf = quantizer_config(q, 'x', 'x_q')
    assert not np.any(conf['mask_kbi'][1])
    assert (conf['SAT'], conf['RND']) == ('WRAP', 'TRN')


def test_unbuilt_quantizer_is_an_error() -> None:
    with pytest.raises(ValueError, match='not built'):
        kbi_masks(ActivationQuantizer(name='lonely'))


# -- hls4ml integration ------------------------------------------------------------------------------------------------


def test_plain_hls4ml_conversion_uses_our_handlers(tmp_path: Path) -> None:
    model = _mlp()
    plain = hls4ml.converters.convert_from_keras_model(model, output_dir=str(tmp_path / 'plain'), backend='Vitis')
    ours = hgq.to_hls(model, tmp_path / 'ours', backend='Vitis', write=False)
    assert _classes(plain) == _classes(ours)
    plain_types = [str(n.get_output_variable().type.precision) for n in plain.graph.values()]
    our_types = [str(n.get_output_variable().type.precision) for n in ours.graph.values()]
    assert plain_types == our_types


def test_our_headers_ship_with_the_package_and_are_written_into_our_projects_only(tmp_path: Path) -> None:
    path = Path(header_path())
    assert path.is_file() and path.parent == Path(str(importlib.resources.files('hgq.hls_templates')))
    assert 'quantize_stream' in path.read_text()
    for backend in ('Vivado', 'Vitis'):
        assert str(path) not in map(str, get_backend(backend).get_custom_source().values())
        hgq.to_hls(_mlp(), tmp_path / backend, backend=backend)
        for name in HEADERS:
            assert (tmp_path / backend / 'firmware' / 'nnet_utils' / name).is_file()


def test_consecutive_and_zero_width_uniform_quantizers_are_not_fused(tmp_path: Path) -> None:
    tensor = {'granularity': 'tensor'}
    model = keras.Sequential(
        [
            keras.Input((6,)),
            HQuantize(input_quantizer=tensor),
            HDense(4, input_quantizer=tensor),
            HDense(3, input_quantizer={**tensor, 'f_init': -30.0}),
        ]
    )
    hgq.calibrate(model, RNG.normal(size=(256, 6)).astype('float32'))
    hls_model = hgq.to_hls(model, tmp_path, write=False)
    quantizers = [n.name for n in hls_model.graph.values() if isinstance(n, HGQFixedPointQuantizer)]
    # HQuantize is fused into the input type; the next two would be overwritten / become 1-bit types if fused
    assert quantizers == [model.layers[1].input_quantizer.name, model.layers[2].input_quantizer.name]


def test_sat_quantizer_keeps_fractional_bits_where_it_saturates(tmp_path: Path) -> None:
    sat = {'overflow_mode': 'SAT', 'round_mode': 'TRN', 'i_init': 1.0, 'f_init': 6.0}
    model = keras.Sequential(
        [keras.Input((4,)), HQuantize(input_quantizer={'f_init': 1.0}), HDense(2, input_quantizer=sat)]
    )
    hgq.calibrate(model, 4 * RNG.normal(size=(256, 4)).astype('float32'))
    hls_model = hgq.to_hls(model, tmp_path, write=False)
    node = hls_model.graph[model.layers[1].input_quantizer.name]
    k, width, integer = node.mask_kbi
    assert np.all(width - integer == 6), 'saturation bound 2 - 2**-6 needs all 6 fractional bits'


def test_stream_quantizer_generates_per_pack_casts(tmp_path: Path) -> None:
    channel = {'granularity': 'channel'}
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            HQuantize(),
            HConv2D(3, 3, activation='relu', input_quantizer=channel),
            keras.layers.Flatten(),
            HDense(2),
        ]
    )
    hgq.calibrate(model, RNG.normal(size=(256, 6, 6, 2)).astype('float32'))
    hls_model = hgq.to_hls(model, tmp_path, io_type='io_stream', write=False)
    stream = [n for n in hls_model.graph.values() if isinstance(n, HGQStreamQuantizer)]
    assert len(stream) >= 2
    configs = [n.get_attr('config_cpp') for n in stream]
    assert all('hgq::quantizer_stream_config' in c for c in configs)
    assert any('switch (p)' in c for c in configs), 'element-wise formats switch with the pixel'
    assert all('quantize_stream' in n.get_attr('function_cpp') for n in stream)


def test_quantize_body_groups_packs_with_equal_formats() -> None:
    k = np.ones((1, 3, 2), dtype=int)
    width = np.array([[[4, 0], [4, 0], [5, 3]]])
    integer = np.array([[[2, 0], [2, 0], [2, 1]]])
    body = quantize_body((k, width, integer), (3, 2), 2, 'RND', 'SAT', indent='')
    assert body.splitlines() == [
        'switch (p) {',
        'case 0:',
        'case 1:',
        '    out[0] = ap_fixed<4,2,AP_RND,AP_SAT>(in[0]);',
        '    out[1] = 0;',
        '    break;',
        'default:',
        '    out[0] = ap_fixed<5,2,AP_RND,AP_SAT>(in[0]);',
        '    out[1] = ap_fixed<3,1,AP_RND,AP_SAT>(in[1]);',
        '    break;',
        '}',
    ]
    uniform = quantize_body((k[:, :1], width[:, :1], integer[:, :1]), (3, 2), 2, 'TRN', 'WRAP', indent='')
    assert 'switch' not in uniform and uniform.count('out[') == 2
    with pytest.raises(ValueError, match='packs of 4'):
        quantize_body((k, width, integer), (3, 2), 4, 'TRN', 'WRAP')


# -- to_hls checks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('setting', 'value', 'message'),
    [
        ('backend', 'Quartus', 'backend must be one of'),
        ('io_type', 'io_serial', 'io_type must be one of'),
        ('strategy', 'Fastest', 'strategy must be one of'),
        ('part', 'vu13p', 'part must be a Xilinx part name'),
        ('part', 'xcvu13p flga2577', 'part must be a Xilinx part name'),
        ('clock_period', 0, 'clock_period must be a finite positive number'),
        ('clock_period', float('inf'), 'clock_period must be a finite positive number'),
        ('project_name', 'my-project', 'project_name must be a C identifier'),
        ('project_name', 'class', "project_name 'class' is a C\\+\\+ keyword"),
    ],
)
def test_bad_settings_are_rejected_with_the_argument_named(setting, value, message, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=message):
        hgq.to_hls(_mlp(), tmp_path, **{setting: value})


def test_settings_are_case_insensitive(tmp_path: Path) -> None:
    hls_model = hgq.to_hls(_mlp(), tmp_path, backend='vivado', io_type='IO_PARALLEL', strategy='latency', write=False)
    assert hls_model.config.get_config_value('Backend') == 'Vivado'


def test_uncalibrated_model_is_an_error_unless_allowed(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6,)), HQuantize(), HDense(3)])
    with pytest.raises(ConversionError, match=r'not calibrated.*hgq\.calibrate\(model, data\)'):
        hgq.to_hls(model, tmp_path)
    hgq.to_hls(model, tmp_path, allow_uncalibrated=True, write=False)
    assert json.loads((tmp_path / 'hgq_meta.json').read_text())['calibrated'] is False


def test_training_after_calibration_makes_it_stale(tmp_path: Path) -> None:
    model = _mlp()
    hgq.to_hls(model, tmp_path / 'fresh', write=False)
    model.compile('sgd', 'mse')
    model.fit(np.ones((8, 6), 'float32'), np.zeros((8, 3), 'float32'), epochs=1, verbose=0)
    with pytest.raises(ConversionError, match='trained after calibration'):
        hgq.to_hls(model, tmp_path / 'stale')


def test_sat_only_model_needs_no_calibration(tmp_path: Path) -> None:
    sat = {'overflow_mode': 'SAT'}
    model = keras.Sequential([keras.Input((6,)), HQuantize(input_quantizer=sat), HDense(3, input_quantizer=sat)])
    hgq.to_hls(model, tmp_path, write=False)


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2 * x


def test_unsupported_layer_is_named_with_its_class(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6,)), HQuantize(), Doubler(name='doubler'), HDense(3)])
    hgq.calibrate(model, RNG.normal(size=(64, 6)).astype('float32'))
    with pytest.raises(ConversionError, match=r"'doubler' of class test_convert\.Doubler cannot be converted"):
        hgq.to_hls(model, tmp_path)


def test_plain_keras_layer_with_weights_is_rejected(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6,)), HQuantize(), keras.layers.Dense(3, name='float_dense')])
    hgq.calibrate(model, RNG.normal(size=(64, 6)).astype('float32'))
    with pytest.raises(ConversionError, match="'float_dense' .* has weights but is not an H-layer"):
        hgq.to_hls(model, tmp_path)


def test_streamed_padded_pooling_is_rejected(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6, 6, 2)), HQuantize(), HMaxPooling2D(3, strides=2, padding='same')])
    hgq.calibrate(model, RNG.normal(size=(64, 6, 6, 2)).astype('float32'))
    with pytest.raises(ConversionError, match="io_stream: hls4ml's streaming pooling needs padding='valid'"):
        hgq.to_hls(model, tmp_path, io_type='io_stream')
    hgq.to_hls(model, tmp_path, io_type='io_parallel', write=False)


def test_meta_file_records_ebops_and_settings(tmp_path: Path) -> None:
    model = _mlp()
    hgq.to_hls(model, tmp_path, backend='Vivado', part='xc7z020clg400-1', clock_period=10)
    meta = json.loads((tmp_path / 'hgq_meta.json').read_text())
    assert meta['ebops'] == hgq.ebops(model) > 0
    assert meta['layer_ebops'] == hgq.layer_ebops(model)
    assert (meta['backend'], meta['part'], meta['clock_period'], meta['calibrated']) == (
        'Vivado',
        'xc7z020clg400-1',
        10,
        True,
    )
    assert (tmp_path / 'firmware' / 'myproject.cpp').is_file()


def test_one_quantizer_fused_per_distributed_arithmetic_kernel(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6,)), HQuantize(), HDense(4)])
    hgq.calibrate(model, RNG.normal(size=(256, 6)).astype('float32'))
    model.layers[0].input_quantizer.f.assign(np.arange(6, dtype='float32'))  # not uniform: not fused into the input
    hls_model = hgq.to_hls(model, tmp_path, strategy='distributed_arithmetic', write=False)
    code = str(hls_model.graph[model.layers[1].name].get_attr('da_codegen'))
    for n in range(6):
        assert code.count(f' model_inp_q_{n} =') == 1


# -- refusals before any work ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('layer', [keras.layers.Activation('tanh'), keras.layers.Activation('sigmoid')])
def test_plain_layers_that_change_values_are_refused(layer: keras.layers.Layer, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6,)), HQuantize(), HDense(4), layer])
    hgq.calibrate(model, RNG.normal(size=(64, 6)).astype('float32'))
    with pytest.raises(ConversionError, match=f"'{layer.name}' of class .*Activation is not an H-layer and changes"):
        hgq.to_hls(model, tmp_path / 'prj')
    assert not (tmp_path / 'prj').exists()


def test_pass_through_plain_layers_are_allowed(tmp_path: Path) -> None:
    model = keras.Sequential(
        [keras.Input((2, 3)), HQuantize(), keras.layers.Reshape((3, 2)), keras.layers.Flatten()]
        + [keras.layers.Dropout(0.5), HDense(2)]
    )
    hgq.calibrate(model, RNG.normal(size=(64, 2, 3)).astype('float32'))
    hgq.to_hls(model, tmp_path, write=False)


def test_a_directory_with_another_project_is_refused_unless_overwrite(tmp_path: Path) -> None:
    model = _mlp()
    hgq.to_hls(model, tmp_path, project_name='first')
    hgq.to_hls(model, tmp_path, project_name='first')  # the same project again: rewritten in place
    with pytest.raises(ConversionError, match="holds the hls4ml project 'first'; writing 'second' into it would mix"):
        hgq.to_hls(model, tmp_path, project_name='second')
    assert (tmp_path / 'firmware' / 'first.cpp').is_file() and not (tmp_path / 'firmware' / 'second.cpp').exists()
    hgq.to_hls(model, tmp_path, project_name='second', overwrite=True)
    assert (tmp_path / 'firmware' / 'second.cpp').is_file() and not (tmp_path / 'firmware' / 'first.cpp').exists()


def test_an_output_path_blocked_by_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / 'file').write_text('')
    with pytest.raises(ConversionError, match='output directory .*file is a file, not a directory'):
        hgq.to_hls(_mlp(), tmp_path / 'file')
    with pytest.raises(ConversionError, match='output directory .*file/prj is not writable'):
        hgq.to_hls(_mlp(), tmp_path / 'file' / 'prj')


@pytest.mark.slow
@pytest.mark.parametrize('io_type', ['io_parallel', 'io_stream'])
def test_a_model_output_that_feeds_another_layer_is_exact(io_type: str, tmp_path: Path) -> None:
    inputs = keras.Input((6,))
    a = HDense(4, name='a')(HQuantize(name='q')(inputs))
    b = HDense(2, name='b')(a)
    model = keras.Model(inputs, [a, b])
    x = RNG.normal(size=(1000, 6)).astype('float32')
    hgq.calibrate(model, x)
    hls_model = hgq.to_hls(model, tmp_path, io_type=io_type)
    hls_model.compile()
    x = np.concatenate([x, 4 * x])  # half of it beyond the calibrated range: wraps
    keras_a, keras_b = model.predict(x, verbose=0)
    hls_a, hls_b = hls_model.predict(x.astype('float64'))
    assert np.array_equal(keras_a, hls_a.reshape(keras_a.shape))
    assert np.array_equal(keras_b, hls_b.reshape(keras_b.shape))
