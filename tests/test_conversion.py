"""Conversion settings (one set of defaults and checks for to_hls, run configurations and hgq convert) and the
bit-exact comparison, including inputs that fixed point cannot represent."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hgq.conversion import ConversionError, ConversionSettings, compare_outputs, read_meta


def test_defaults_and_canonical_spelling() -> None:
    settings = ConversionSettings(backend='VIVADO', io_type='IO_STREAM', strategy='resource', clock_period=4)
    assert (settings.backend, settings.io_type, settings.strategy) == ('Vivado', 'io_stream', 'Resource')
    assert settings.clock_period == 4.0 and isinstance(settings.clock_period, float)
    assert ConversionSettings().to_dict() == {
        'backend': 'Vitis',
        'part': 'xcvu13p-flga2577-2-e',
        'clock_period': 5.0,
        'io_type': 'io_parallel',
        'strategy': 'Latency',
        'project_name': 'myproject',
    }


@pytest.mark.parametrize(
    ('setting', 'value', 'message'),
    [
        ('clock_period', math.inf, 'clock_period must be a finite positive number'),
        ('clock_period', math.nan, 'clock_period must be a finite positive number'),
        ('clock_period', True, 'clock_period must be a finite positive number'),
        ('project_name', 'class', "project_name 'class' is a C\\+\\+ keyword"),
        ('project_name', 'main', "project_name 'main' is a C\\+\\+ keyword"),
        ('project_name', 'prój', 'project_name must be a C identifier'),
        ('part', 'xcvu13p flga2577', 'part must be a Xilinx part name'),
    ],
)
def test_bad_settings_name_the_setting(setting: str, value: object, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        ConversionSettings(**{setting: value})


def test_compare_outputs_counts_exactly() -> None:
    keras_out = np.array([[0.5, 1.0], [0.25, 2.0], [1.0, 1.0]])
    hls_out = np.array([0.5, 1.0, 0.25, 2.0 + 2.0**-20, 1.0, 1.0])
    result = compare_outputs(keras_out, hls_out)
    assert (result.mismatched_samples, result.mismatched_values, result.nonfinite_samples) == (1, 1, 0)
    assert result.max_abs_diff == 2.0**-20 and not result.exact
    assert result.describe() == 'bit-exact check: 1 of 3 samples differ from Keras (1 output values)'


def test_non_finite_inputs_and_keras_outputs_are_reported_not_compared() -> None:
    x = np.array([[1.0], [np.inf], [3.4e38], [np.nan], [2.0]], dtype=np.float32)
    keras_out = np.array([[0.5], [np.nan], [np.nan], [np.nan], [1.0]])  # Keras gives NaN; firmware finite numbers
    hls_out = np.array([0.5, 0.75, -1.0, 0.0, 1.0])
    result = compare_outputs(keras_out, hls_out, x)
    assert (result.mismatched_samples, result.nonfinite_samples, result.n_samples) == (0, 3, 5)
    assert result.exact
    assert 'bit-exact check: 0 of 2 samples differ' in result.describe()
    assert '3 samples not compared: their input or Keras output is inf/NaN' in result.describe()


def test_read_meta_names_a_corrupt_file(tmp_path: Path) -> None:
    assert read_meta(tmp_path) is None
    (tmp_path / 'hgq_meta.json').write_text('{"ebops": 1')
    with pytest.raises(ConversionError, match=r'hgq_meta\.json is not valid JSON'):
        read_meta(tmp_path)
    (tmp_path / 'hgq_meta.json').write_text('[1, 2]')
    with pytest.raises(ConversionError, match='must hold a JSON object'):
        read_meta(tmp_path)
