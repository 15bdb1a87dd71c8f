"""Shared check for the table-layer tests: calibrate, convert with plain hls4ml, compile, compare exactly."""

import numpy as np
from hls4ml.converters import convert_from_keras_model

import hgq.convert  # registers the converter with hls4ml


def assert_csim_bit_exact(model, x_calib, tmp_path, io_type='io_parallel', scale=(1.0, 2.0)):
    """Calibrate on ``x_calib``, compile the C simulation, and compare on ``x_calib`` times each factor.

    The conversion goes through hls4ml's own ``convert_from_keras_model`` (``import hgq.convert`` registers our
    handlers), so it also checks that a user's plain hls4ml script works. Returns the Keras outputs.
    """
    hgq.calibrate(model, x_calib)
    hls_model = convert_from_keras_model(
        model,
        output_dir=str(tmp_path / 'prj'),
        backend='Vitis',
        io_type=io_type,
        allow_v2_fallback=False,
        allow_da_fallback=False,
    )
    hls_model.compile()
    x = np.concatenate([x_calib * s for s in scale]).astype('float32')
    y_keras = model.predict(x, verbose=0)
    y_hls = hls_model.predict(x).reshape(y_keras.shape)
    assert np.array_equal(y_keras, y_hls), f'{np.mean(y_keras != y_hls):.4%} of outputs differ'
    return y_keras
