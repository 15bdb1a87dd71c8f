"""A compiled graph computes what the layers compute op by op (``model.predict`` against ``model(x)``).

TensorFlow's graph optimizer drops ``stop_gradient`` from inference graphs and may regroup sums; the quantizers'
straight-through estimators must stay exact under any such regrouping (:func:`hgq.quantizer.straight_through`).
"""

import keras
import numpy as np
import pytest

from hgq.fixed_point import quantize
from hgq.layers import HDense, HQuantize
from hgq.quantizer import ActivationQuantizer


def _learned_sat_model(rng: np.random.Generator, n: int) -> keras.Model:
    """An input quantizer with learned, non-integer i and f (as training leaves them), then a dense layer."""
    quantizer = ActivationQuantizer(overflow_mode='SAT', round_mode='RND_CONV', signed=False)
    model = keras.Sequential([keras.Input((n,)), HQuantize(input_quantizer=quantizer), HDense(4)])
    quantizer.i.assign(rng.uniform(-1.5, 1.5, quantizer.i.shape).astype('float32'))
    quantizer.f.assign(rng.uniform(0.6, 5.4, quantizer.f.shape).astype('float32'))
    return model


@pytest.mark.parametrize('seed', [0, 1])
def test_predict_equals_the_eager_call_for_learned_saturating_bits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = _learned_sat_model(rng, 256)
    x = rng.uniform(-3.0, 6.0, (512, 256)).astype('float32')  # a third beyond every saturation bound
    quantizer = model.layers[0].input_quantizer
    i = np.floor(keras.ops.convert_to_numpy(quantizer.i) + 0.5)
    f = np.floor(keras.ops.convert_to_numpy(quantizer.f) + 0.5)
    expected = quantize(x, 0, i, f, 'RND_CONV', 'SAT')
    front = keras.Model(model.inputs[0], model.layers[0].output)
    graph = front.predict(x, verbose=0, batch_size=512)
    eager = keras.ops.convert_to_numpy(front(x))
    assert np.array_equal(eager, expected)
    assert np.array_equal(graph, expected)
    assert np.array_equal(model.predict(x, verbose=0), keras.ops.convert_to_numpy(model(x)))
