"""hgq.summary (per-layer bits, pruning, EBOPs) and hgq.plot (PNG files of the front and the bitwidths)."""

import keras
import numpy as np
import pytest

import hgq
from hgq.layers import HConv2D, HDense, HQuantize
from hgq.quantizer import effective_bits
from hgq.summary import format_rows, quantized_weight_bits

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            HConv2D(2, 3, activation='relu'),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.1),
            HDense(3),
        ]
    )
    dense = model.layers[-1]
    kernel = dense.kernel.numpy()
    kernel[:4] = 0.0  # 4 input rows x 3 units pruned
    dense.kernel.assign(kernel)
    hgq.calibrate(model, np.random.default_rng(0).uniform(-1, 1, (64, 6, 6, 1)).astype('float32'))
    return model


def test_summary_rows_hold_exact_bits_pruning_and_ebops(model):
    rows = hgq.summary(model, print_fn=None)
    assert [(r['name'], r['class']) for r in rows] == [(layer.name, type(layer).__name__) for layer in model.layers]
    assert [r['params'] for r in rows] == [layer.count_params() for layer in model.layers]
    conv, flatten, dropout, dense = rows
    assert flatten['weight_bits'] is flatten['input_bits'] is flatten['pruned'] is flatten['ebops'] is None
    layer = model.layers[-1]
    kernel_bits = effective_bits(layer.qkernel.numpy())
    bias_bits = effective_bits(layer.qbias.numpy())
    all_bits = np.concatenate([kernel_bits.ravel(), bias_bits.ravel()])
    assert dense['weight_bits'] == (float(np.mean(all_bits)), int(np.max(all_bits)))
    assert dense['pruned'] == np.sum(all_bits == 0) / all_bits.size
    assert dense['pruned'] >= 12 / all_bits.size
    k, i, f = layer.input_quantizer.kif()
    widths = np.maximum(k + i + f, 0)
    assert dense['input_bits'] == (float(np.mean(widths)), int(np.max(widths)))
    assert dense['ebops'] == layer.exact_ebops()
    assert conv['ebops'] == model.layers[0].exact_ebops()
    assert sum(r['ebops'] or 0 for r in rows) == hgq.ebops(model)


def test_summary_prints_a_table_like_model_summary(model):
    lines = []
    rows = hgq.summary(model, print_fn=lines.append)
    text = lines[0]
    assert text == format_rows(rows, model.name)
    assert 'Layer (type)' in text and 'W bits mean/max' in text and 'EBOPs' in text
    for layer in model.layers:
        assert f'{layer.name} ({type(layer).__name__})' in text
    assert f'Total params: {model.count_params():,}' in text
    assert f'Total EBOPs: {hgq.ebops(model):,.0f}' in text


def test_quantized_weight_bits_follow_the_exported_values():
    layer = HDense(2)
    layer.build((None, 3))
    layer.kernel.assign(np.array([[0.5, 0.0], [0.75, -1.5], [0.001, 3.0]], dtype='float32'))
    kernel_bits, bias_bits = quantized_weight_bits(layer)
    assert np.array_equal(kernel_bits, effective_bits(layer.qkernel.numpy()))
    assert kernel_bits[0, 1] == 0 and bias_bits.shape == (2,)


def test_summary_rejects_an_unbuilt_model():
    with pytest.raises(ValueError, match='not built'):
        hgq.summary(keras.Sequential([HQuantize(), HDense(2)]), print_fn=None)


def test_plot_bits_writes_a_png(model, tmp_path):
    path = hgq.plot.bits(model, tmp_path / 'sub' / 'bits.png')
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list(path.parent.glob('.partial*'))
    with pytest.raises(ValueError, match='no H-layers'):
        hgq.plot.bits(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), tmp_path / 'x.png')


def test_plot_pareto_writes_a_png_from_points_or_a_directory(tmp_path):
    front = [{'val_accuracy': 0.9, 'ebops': 1e3}, {'val_accuracy': 0.95, 'ebops': 4e3}]
    history = {'val_accuracy': [0.5, 0.9, 0.95, 0.93], 'ebops': [9e3, 1e3, 4e3, 5e3]}
    marked = [{'val_accuracy': 0.95, 'ebops': 4e3, 'label': 'model0'}]
    path = hgq.plot.pareto(front, tmp_path / 'pareto.png', history=history, marked=marked)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(FileNotFoundError, match='no Pareto front'):
        hgq.plot.pareto(tmp_path, tmp_path / 'p.png')
