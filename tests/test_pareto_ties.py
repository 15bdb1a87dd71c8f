"""ParetoFront with ties: equal metric values are common (test accuracy moves in steps of ``1/n``).

A checkpoint is kept only when no saved one is at least as good in every metric, so with equal accuracy the one
with fewer EBOPs wins whichever comes first, with equal EBOPs the more accurate one, and an exact repeat of a saved
point is not saved again (the earlier checkpoint stays).
"""

import keras
import pytest

from hgq.callbacks import ParetoFront, read_front
from hgq.layers import HDense, HQuantize


class _Front:
    """Feeds chosen metric values to a ParetoFront, one epoch per call, without training."""

    def __init__(self, directory, **kwargs):
        self.front = ParetoFront(directory, **kwargs)
        self.front.set_model(keras.Sequential([keras.Input((2,)), HQuantize(), HDense(1)]))
        self.epochs = 0

    def epoch(self, **values):
        self.front.on_epoch_end(self.epochs, dict(values))
        self.epochs += 1

    def saved(self):
        """``(epoch, values)`` of the front, as indexed on disk; checks the files match the index."""
        points = read_front(self.front.directory)
        files = sorted(p.name for p in self.front.directory.glob('*.keras'))
        assert files == sorted(p.path.name for p in points)
        assert sorted(p.epoch for p in points) == sorted(p.epoch for p in self.front.points)
        return sorted((p.epoch, tuple(p.values.values())) for p in points)


@pytest.mark.parametrize('later_ebops, kept', [(120.0, [1]), (80.0, [2])])
def test_equal_accuracy_keeps_the_cheaper_checkpoint(tmp_path, later_ebops, kept):
    run = _Front(tmp_path)
    run.epoch(val_accuracy=0.75, ebops=100.0)
    run.epoch(val_accuracy=0.75, ebops=later_ebops)
    assert [epoch for epoch, _ in run.saved()] == kept


@pytest.mark.parametrize('later_accuracy, kept', [(0.5, [1]), (0.875, [2])])
def test_equal_ebops_keeps_the_more_accurate_checkpoint(tmp_path, later_accuracy, kept):
    run = _Front(tmp_path)
    run.epoch(val_accuracy=0.75, ebops=100.0)
    run.epoch(val_accuracy=later_accuracy, ebops=100.0)
    assert [epoch for epoch, _ in run.saved()] == kept


def test_repeated_metrics_keep_the_first_checkpoint(tmp_path):
    run = _Front(tmp_path)
    for _ in range(3):
        run.epoch(val_accuracy=0.75, ebops=100.0)
    assert run.saved() == [(1, (0.75, 100.0))]


def test_tie_on_one_metric_with_several_saved_points(tmp_path):
    run = _Front(tmp_path)
    run.epoch(val_accuracy=0.5, ebops=50.0)
    run.epoch(val_accuracy=0.75, ebops=100.0)
    run.epoch(val_accuracy=0.875, ebops=200.0)
    run.epoch(val_accuracy=0.75, ebops=50.0)  # ties both neighbours on one metric, beats them on the other
    assert run.saved() == [(3, (0.875, 200.0)), (4, (0.75, 50.0))]
    run.epoch(val_accuracy=0.875, ebops=200.0)  # repeat of a saved point
    run.epoch(val_accuracy=0.625, ebops=50.0)  # tied EBOPs, less accurate
    assert run.saved() == [(3, (0.875, 200.0)), (4, (0.75, 50.0))]


def test_ties_when_both_metrics_are_minimized(tmp_path):
    run = _Front(tmp_path, metrics=('val_loss', 'ebops'), sides=('min', 'min'))
    run.epoch(val_loss=0.5, ebops=100.0)
    run.epoch(val_loss=0.5, ebops=120.0)  # worse: not saved
    run.epoch(val_loss=0.6, ebops=100.0)  # worse: not saved
    assert run.saved() == [(1, (0.5, 100.0))]
    run.epoch(val_loss=0.4, ebops=100.0)  # better loss at equal EBOPs: replaces epoch 1
    assert run.saved() == [(4, (0.4, 100.0))]


def test_three_metrics_with_ties(tmp_path):
    sides = ('max', 'min', 'min')
    run = _Front(tmp_path, metrics=('val_accuracy', 'val_loss', 'ebops'), sides=sides)
    run.epoch(val_accuracy=0.75, val_loss=0.5, ebops=100.0)
    run.epoch(val_accuracy=0.75, val_loss=0.5, ebops=100.0)  # equal everywhere
    run.epoch(val_accuracy=0.75, val_loss=0.4, ebops=100.0)  # better in one metric only
    assert run.saved() == [(3, (0.75, 0.4, 100.0))]
    run.epoch(val_accuracy=0.875, val_loss=0.4, ebops=150.0)  # trade-off: both stay
    assert [epoch for epoch, _ in run.saved()] == [3, 4]
