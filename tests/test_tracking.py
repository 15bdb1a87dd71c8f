"""Range tracking of WRAP-mode activation quantizers, as documented on :class:`ActivationQuantizer`.

``momentum`` is "how slowly the tracked range shrinks towards the range of the current batch (per step)": a batch
beyond the range widens it at once (nothing seen in training may wrap), a batch inside it pulls each bound towards
the batch's own bound by ``1 - momentum`` of the distance per training step. Inference never moves the range.
"""

import numpy as np
import pytest

from hgq.quantizer import ActivationQuantizer


def _range(q):
    return np.asarray(q.vmin.numpy(), np.float64), np.asarray(q.vmax.numpy(), np.float64)


def _batch_bounds(x, granularity):
    """Per-variable min and max of a batch ``(n, 3, 4)``, reduced as each granularity shares one bitwidth."""
    axes = {'element': (0,), 'channel': (0, 1), 'tensor': (0, 1, 2)}[granularity]
    return x.min(axis=axes, keepdims=True)[0], x.max(axis=axes, keepdims=True)[0]


@pytest.mark.parametrize('granularity', ['element', 'channel', 'tensor'])
@pytest.mark.parametrize('momentum', [0.0, 0.5, 0.9])
def test_range_shrinks_towards_the_batch_by_one_minus_momentum_per_step(granularity, momentum):
    q = ActivationQuantizer(granularity=granularity, momentum=momentum, i_init=4.0)
    q.build((None, 3, 4))
    x = np.random.default_rng(1).uniform(-0.5, 0.25, size=(8, 3, 4)).astype('float32')
    lo, hi = _batch_bounds(x, granularity)
    vmin, vmax = _range(q)
    assert np.all(vmin < lo) and np.all(vmax > hi), 'the test needs a batch inside the initial range'
    for _ in range(3):
        q(x, training=True)
        expected_min = momentum * vmin + (1 - momentum) * lo
        expected_max = momentum * vmax + (1 - momentum) * hi
        vmin, vmax = _range(q)
        np.testing.assert_allclose(vmin, expected_min, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(vmax, expected_max, rtol=1e-6, atol=1e-7)
    # after n steps the distance to the batch bounds is momentum**n of the initial one
    assert np.all(vmin <= lo) and np.all(vmax >= hi)


@pytest.mark.parametrize('granularity', ['element', 'channel', 'tensor'])
def test_range_widens_at_once_to_a_batch_beyond_it(granularity):
    q = ActivationQuantizer(granularity=granularity, momentum=0.99, i_init=0.0)
    q.build((None, 3, 4))
    x = np.random.default_rng(2).uniform(-40.0, 30.0, size=(8, 3, 4)).astype('float32')
    q(x, training=True)
    lo, hi = _batch_bounds(x, granularity)
    vmin, vmax = _range(q)
    assert np.array_equal(vmin, lo.astype(np.float32).astype(np.float64))
    assert np.array_equal(vmax, hi.astype(np.float32).astype(np.float64))


def test_range_moves_only_while_training_and_marks_calibration_stale():
    q = ActivationQuantizer(momentum=0.5)
    q.build((None, 4))
    q.set_range(np.full(4, -3.0), np.full(4, 3.0))
    q.calibrated.assign(1.0)
    x = np.zeros((2, 4), 'float32')
    q(x)
    q(x, training=False)
    assert np.array_equal(_range(q)[1], np.full(4, 3.0)) and float(q.calibrated.numpy()) == 1.0
    q(x, training=True)
    assert np.array_equal(_range(q)[1], np.full(4, 1.5)) and float(q.calibrated.numpy()) == 0.0


def test_tracked_range_sets_the_integer_bits():
    """The integer bits and sign hold the tracked range after rounding, and no fewer suffice."""
    q = ActivationQuantizer(f_init=2.0)
    q.build((None, 5))
    vmin = np.array([0.0, -1.0, -1.1, 0.0, -0.1])
    vmax = np.array([0.9, 0.5, 3.0, 3.875, 0.1])
    q.set_range(vmin, vmax)
    k, i, f = q.kif()
    assert np.array_equal(k, [0, 1, 1, 0, 0])  # -0.1 rounds to 0 with f = 2
    for lo, hi, kj, ij, fj in zip(vmin, vmax, k, i, f, strict=True):
        qlo, qhi = (np.floor(v * 2.0**fj + 0.5) / 2.0**fj for v in (lo, hi))
        assert -kj * 2.0**ij <= qlo and qhi <= 2.0**ij - 2.0**-fj
        assert not (-kj * 2.0 ** (ij - 1) <= qlo and qhi <= 2.0 ** (ij - 1) - 2.0**-fj)
