"""Keras callbacks for HGQ training: ``beta`` schedules, an EBOPs target, and a Pareto front of checkpoints.

Every callback here puts the model's exact EBOPs (:func:`hgq.ebops`) into the epoch logs as ``ebops``, computed
once per epoch whichever callbacks run, so the progress bar, ``History`` and other callbacks see it.

:class:`BetaSchedule` and :class:`BetaTarget` own ``beta``: they set it at the start of training or of each epoch
and leave it at its last value, however ``fit`` ends. :class:`BetaWarmup` and :class:`SettleBits` change the model
only while it trains and undo that when training ends. Keras skips ``on_train_end`` when ``fit`` raises, so each
of them undoes what an interrupted ``fit`` left first thing in its next ``fit``; to give the model back at once,
call its ``restore()`` (e.g. in a ``finally``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import keras
from keras import ops

from hgq.calibrate import CalibrationError, calibrate, wrap_quantizers
from hgq.ebops import ebops, h_layers
from hgq.exactness import InexactError
from hgq.fileio import write_atomic, write_text_atomic

__all__ = [
    'EBOPsLogger',
    'BetaSchedule',
    'BetaTarget',
    'BetaWarmup',
    'SettleBits',
    'ParetoFront',
    'ParetoPoint',
    'read_front',
    'non_dominated',
    'log_ebops',
    'set_beta',
    'beta_update',
    'INTERPOLATIONS',
]

INTERPOLATIONS = ('linear', 'log')
SIDES = ('max', 'min')
FRONT_INDEX = 'front.json'
# Pruned bits grow back slowly, so below the target BetaTarget lowers beta this many times faster than it raises it.
RECOVERY = 4.0


def log_ebops(model: keras.Model, logs: dict[str, Any] | None) -> float:
    """Return the model's exact EBOPs, computing them only if ``logs`` has no ``ebops`` yet, and log them.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> logs = {}
    >>> hgq.callbacks.log_ebops(model, logs) == logs['ebops'] > 0
    True
    """
    if logs is None:
        return ebops(model)
    if 'ebops' not in logs:
        logs['ebops'] = ebops(model)
    return float(logs['ebops'])


def set_beta(model: keras.Model, beta: float) -> int:
    """Set the ``beta`` variable of every H-layer of ``model``; returns how many layers were set.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> hgq.callbacks.set_beta(model, 1e-6)
    2
    """
    layers = list(h_layers(model))
    for layer in layers:
        layer.beta.assign(float(beta))
    return len(layers)


class EBOPsLogger(keras.callbacks.Callback):
    """Log the model's exact EBOPs as ``ebops`` at the end of every epoch (once per epoch, not per step).

    Examples
    --------
    >>> import hgq
    >>> callbacks = [hgq.callbacks.EBOPsLogger()]
    >>> # model.fit(x, y, callbacks=callbacks) -> history.history['ebops']
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        log_ebops(self.model, logs)


class BetaSchedule(keras.callbacks.Callback):
    """Set every H-layer's ``beta`` at the start of each epoch from a constant or a piecewise schedule.

    Parameters
    ----------
    beta : float or sequence of (epoch, beta) pairs
        A constant, or points of a piecewise schedule with increasing epochs (the first epoch is 0, as Keras
        counts in callbacks). Before the first point the first value holds, after the last point the last value.
    interpolation : {'linear', 'log'}
        Between points: linear in ``beta``, or linear in ``log(beta)`` (log-linear; every value must be > 0).

    Logs ``beta`` (the value used during the epoch) and ``ebops``.

    Examples
    --------
    >>> from hgq.callbacks import BetaSchedule
    >>> BetaSchedule(1e-6)(10)
    1e-06
    >>> BetaSchedule([(0, 0.0), (10, 1e-5)])(5)
    5e-06
    >>> round(BetaSchedule([(0, 1e-7), (20, 1e-5)], interpolation='log')(10), 12)
    1e-06
    """

    def __init__(self, beta: float | Sequence[tuple[float, float]], interpolation: str = 'linear') -> None:
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f'BetaSchedule: interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}')
        self.points = _schedule_points(beta)
        self.interpolation = interpolation
        if interpolation == 'log' and any(b <= 0 for _, b in self.points):
            raise ValueError(f'BetaSchedule: log interpolation needs every beta > 0, got {self.points}')
        self.current = self.points[0][1]

    def __call__(self, epoch: float) -> float:
        """The value of ``beta`` at ``epoch``."""
        points = self.points
        if epoch <= points[0][0]:
            return points[0][1]
        for (e0, b0), (e1, b1) in pairwise(points):
            if epoch <= e1:
                if epoch == e1:
                    return b1  # the point itself, exactly (interpolation at t = 1 can miss it in the last bit)
                t = (epoch - e0) / (e1 - e0)
                if self.interpolation == 'log':
                    return math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
                return b0 + t * (b1 - b0)
        return points[-1][1]

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.current = self(epoch)
        set_beta(self.model, self.current)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs['beta'] = self.current
        log_ebops(self.model, logs)


def _schedule_points(beta: float | Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    if isinstance(beta, int | float):
        points = [(0.0, float(beta))]
    else:
        try:
            points = [(float(e), float(b)) for e, b in beta]
        except (TypeError, ValueError):
            raise ValueError(
                f'BetaSchedule: beta must be a number or a list of (epoch, beta) pairs, got {beta!r}'
            ) from None
    if not points:
        raise ValueError('BetaSchedule: the schedule needs at least one (epoch, beta) point')
    if any(b < 0 or not math.isfinite(b) for _, b in points):
        raise ValueError(f'BetaSchedule: every beta must be finite and >= 0, got {points}')
    if any(e1 <= e0 for (e0, _), (e1, _) in pairwise(points)):
        raise ValueError(f'BetaSchedule: epochs must be strictly increasing, got {[e for e, _ in points]}')
    return points


def beta_update(
    beta: float,
    ebops_now: float,
    ebops_before: float | None,
    target: float,
    gain: float = 1.0,
    rate: float = 0.2,
    max_factor: float = 1.2,
    tolerance: float = 0.02,
    beta_min: float = 1e-12,
    beta_max: float = 1.0,
) -> float:
    """One step of :class:`BetaTarget`'s controller, a PI controller on ``e = log(ebops / target)``.

    ``log(beta) += gain * (e_now - e_before + rate * e_now)``: ``beta`` grows while EBOPs fall more slowly than
    ``rate`` times their distance to the target per epoch, and shrinks when they fall faster (which stops the
    overshoot that the lag between ``beta`` and EBOPs would otherwise cause). Below the target the ``rate`` term
    is ``RECOVERY`` (4) times stronger, because pruned bits grow back slowly. Within ``tolerance`` (relative) of
    the target only the damping term acts. The factor per step is at most ``max_factor`` either way and the
    result stays in ``[beta_min, beta_max]``.

    Examples
    --------
    >>> from hgq.callbacks import beta_update
    >>> beta_update(1e-6, 2000.0, 2000.0, 1000.0, max_factor=4.0) / 1e-6  # stuck at 2x: exp(0.2 * log 2)
    1.148698354997035
    >>> beta_update(1e-6, 1010.0, 1010.0, 1000.0)  # within 2 % of the target and steady: unchanged
    1e-06
    >>> beta_update(1e-6, 2000.0, 4000.0, 1000.0) < 1e-6  # falling fast towards the target: ease off
    True
    """
    if ebops_now <= 0 or not math.isfinite(ebops_now):
        return beta
    error = math.log(ebops_now / target)
    before = error if ebops_before is None or ebops_before <= 0 else math.log(ebops_before / target)
    integral = 0.0 if abs(ebops_now / target - 1.0) <= tolerance else rate * error
    if error < 0:
        integral *= RECOVERY
    step = gain * (error - before + integral)
    step = max(-math.log(max_factor), min(math.log(max_factor), step))
    return min(beta_max, max(beta_min, beta * math.exp(step)))


class BetaTarget(keras.callbacks.Callback):
    """Adjust ``beta`` after each epoch so that the model's EBOPs approach a target.

    A PI controller in log space (see :func:`beta_update`): with ``e = log(ebops / target)``, after every epoch
    ``log(beta) += gain * (e - e_previous + rate * e)``. Multiplicative steps suit ``beta``, which matters over
    decades. EBOPs follow ``beta`` with a lag of several epochs (tracked activation ranges shrink slowly), and
    bits pruned too far grow back slowly; the damping term ``e - e_previous`` lowers ``beta`` as soon as EBOPs
    fall faster than the wanted ``rate``, and each step changes ``beta`` by at most ``max_factor`` (20 %), so
    ``beta`` does not wind up while EBOPs lag. Inside a dead band of ``tolerance`` (2 %) only the damping term
    acts. Measured on digits (64-32-10 MLP, 60 epochs, target 5,000): EBOPs end within 5 % of the target, both
    as logged and after :func:`hgq.calibrate`. Start ``beta_init`` near the value you expect to save epochs.

    Parameters
    ----------
    target : float
        EBOPs to reach (exact EBOPs, as :func:`hgq.ebops` reports them).
    beta_init : float
        ``beta`` of every H-layer at the start of training.
    gain : float
        Controller gain (on the change of ``e`` per epoch).
    rate : float
        Wanted fraction of the remaining distance to the target, in log space, covered per epoch.
    max_factor : float
        Largest factor by which ``beta`` changes in one epoch.
    tolerance : float
        Relative dead band around the target in which ``beta`` only reacts to changes.
    beta_min, beta_max : float
        Bounds of ``beta``.
    warmup : int
        Epochs at ``beta_init`` before the controller starts.

    Logs ``beta`` (the value used during the epoch) and ``ebops``.

    Examples
    --------
    Aim at about 3,000 EBOPs (e.g. roughly 1,500 LUTs) for a small jet tagger:

    >>> import hgq
    >>> target = hgq.callbacks.BetaTarget(3000, beta_init=1e-6)
    >>> # model.fit(x, y, epochs=200, callbacks=[target]); history.history['beta'] shows the loop
    """

    def __init__(
        self,
        target: float,
        beta_init: float = 1e-6,
        gain: float = 1.0,
        rate: float = 0.2,
        max_factor: float = 1.2,
        tolerance: float = 0.02,
        beta_min: float = 1e-12,
        beta_max: float = 1.0,
        warmup: int = 0,
    ) -> None:
        super().__init__()
        checks = {
            'target': target > 0,
            'beta_init': beta_min <= beta_init <= beta_max,
            'gain': gain > 0,
            'rate': 0 < rate <= 1,
            'max_factor': max_factor > 1,
            'tolerance': tolerance >= 0,
            'beta_min': 0 < beta_min < beta_max,
            'warmup': warmup >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f'BetaTarget: invalid {", ".join(bad)} (need target > 0, 0 < beta_min <= beta_init <= beta_max, '
                'gain > 0, 0 < rate <= 1, max_factor > 1, tolerance >= 0, warmup >= 0)'
            )
        self.target = float(target)
        self.beta_init = float(beta_init)
        self.beta = self.beta_init
        self.settings = dict(
            gain=gain, rate=rate, max_factor=max_factor, tolerance=tolerance, beta_min=beta_min, beta_max=beta_max
        )
        self.warmup = int(warmup)
        self._epochs_seen = 0
        self._previous: float | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        set_beta(self.model, self.beta)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = log_ebops(self.model, logs)
        if logs is not None:
            logs['beta'] = self.beta
        self._epochs_seen += 1
        if self._epochs_seen > self.warmup:
            self.beta = beta_update(self.beta, current, self._previous, self.target, **self.settings)
            set_beta(self.model, self.beta)
        self._previous = current


class BetaWarmup(keras.callbacks.Callback):
    """Raise every H-layer's ``beta`` linearly from 0 to its own value over the first ``epochs`` epochs.

    A large ``beta`` applied from the first step prunes bits (input pixels, hidden units) before the weights have
    learnt which ones matter, and a pruned element passes no gradient to its input, so some runs never recover
    (digits, ``beta=1e-4``: one seed of three ended at 0.77 test accuracy, the others at 0.93). With a warm-up the
    weights learn under a small cost first. In epoch ``e`` (counted from 0) each layer trains with
    ``beta * e / epochs``; from epoch ``epochs`` on with its full ``beta``. The layers' values are read when
    training begins (so layers with different ``beta`` keep their ratios) and set back when it ends. Nothing is
    done per step: ``beta`` is a variable of each layer, assigned once per epoch.

    If ``fit`` raises, Keras skips ``on_train_end`` and the layers keep their scaled-down ``beta``: the next
    ``fit`` with this callback sets them back before it reads them, and :meth:`restore` does so at once. A layer
    whose ``beta`` was set anew in between (e.g. :func:`set_beta`) keeps the new value.

    For models trained with a constant ``beta``; :class:`BetaSchedule` and :class:`BetaTarget` set ``beta``
    themselves (start their schedule low instead), so do not combine them with this callback.

    Parameters
    ----------
    epochs : int
        Length of the warm-up in epochs (>= 1).

    Logs ``beta_scale`` (the fraction of each layer's ``beta`` used during the epoch) and ``ebops``.

    Examples
    --------
    >>> import hgq
    >>> warmup = hgq.callbacks.BetaWarmup(10)
    >>> warmup.scale(0), warmup.scale(5), warmup.scale(30)
    (0.0, 0.5, 1.0)
    >>> # model.fit(x, y, epochs=60, callbacks=[warmup])  # full beta from epoch 10 (the 11th) on
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        if not (isinstance(epochs, int) and epochs >= 1):
            raise ValueError(f'BetaWarmup: epochs must be an int >= 1, got {epochs!r}')
        self.epochs = epochs
        self.current = 1.0
        # per layer of the training under way: its full beta and the beta this callback left it with
        self._targets: list[tuple[Any, float, float]] = []

    def scale(self, epoch: int) -> float:
        """The fraction of each layer's ``beta`` used in ``epoch`` (from 0)."""
        return min(1.0, max(0.0, epoch / self.epochs))

    def restore(self) -> None:
        """Set every layer's ``beta`` back to its full value, unless it was set anew since this callback set it.

        Training ends with it; after a ``fit`` that raised, call it to give the model back at once.

        Examples
        --------
        >>> import hgq
        >>> warmup = hgq.callbacks.BetaWarmup(10)
        >>> try:  # doctest: +SKIP
        ...     model.fit(x, y, epochs=60, callbacks=[warmup])
        ... finally:
        ...     warmup.restore()
        """
        for layer, beta, left in self._targets:
            if _value(layer.beta) == left:
                layer.beta.assign(beta)
        self._targets = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()  # what an interrupted fit left (Keras skips on_train_end when fit raises)
        self._targets = [(layer, _value(layer.beta), _value(layer.beta)) for layer in h_layers(self.model)]

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.current = self.scale(epoch)
        for n, (layer, beta, _) in enumerate(self._targets):
            layer.beta.assign(beta * self.current)
            self._targets[n] = (layer, beta, _value(layer.beta))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs['beta_scale'] = self.current
        log_ebops(self.model, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()


def _value(variable: Any) -> float:
    return float(keras.ops.convert_to_numpy(variable))


class SettleBits(keras.callbacks.Callback):
    """Freeze the activation bitwidths for the last ``epochs`` epochs of training, so that the weights adapt to them.

    Under a large ``beta`` the bitwidths never come to rest: ``beta`` pushes every one down and the loss pushes
    back, so at any step some activation elements have just lost a bit (or been pruned) and the weights have not
    yet adapted, and the last step's model is less accurate than its EBOPs allow. Holding the activation
    bitwidths (see :meth:`hgq.quantizer.ActivationQuantizer.set_bits_pace`) for the final epochs lets the
    weights catch up. Weight bitwidths keep learning by default: frozen, they would let weights that round to
    zero grow back without ``beta`` pushing them down again (EBOPs creep up, measured on digits); ``weights=True``
    freezes them too. The configured pace is restored when training ends; after a ``fit`` that raised (Keras then skips
    ``on_train_end``), by the next ``fit`` with this callback, or at once by :meth:`restore`.

    Parameters
    ----------
    epochs : int
        Number of final epochs (of the ``epochs`` given to ``fit``) with frozen bitwidths; 0 freezes nothing.
    weights : bool
        Also freeze the bitwidths of the weight quantizers (kernels, biases).

    Logs ``ebops``.

    Examples
    --------
    >>> import hgq
    >>> settle = hgq.callbacks.SettleBits(10)
    >>> # model.fit(x, y, epochs=60, callbacks=[settle])  # activation bits learn in epochs 0-49 only
    """

    def __init__(self, epochs: int, weights: bool = False) -> None:
        super().__init__()
        if not (isinstance(epochs, int) and epochs >= 0):
            raise ValueError(f'SettleBits: epochs must be an int >= 0, got {epochs!r}')
        self.epochs = epochs
        self.weights = bool(weights)
        self._factor: float | None = None
        self._frozen: keras.Model | None = None  # the model whose bits this callback holds

    def _set_pace(self, model: keras.Model, factor: float) -> None:
        for layer in h_layers(model):
            quantizers = layer.quantizers if self.weights else layer.activation_quantizers
            for quantizer in quantizers:
                quantizer.set_bits_pace(factor)
        self._frozen = model if factor != 1.0 else None
        if keras.backend.backend() == 'jax':
            # JAX compiles the pace into the training step (hgq.quantizer.ScaledStep): compile the next step anew.
            # TensorFlow and PyTorch read the pace variable in every step.
            model.make_train_function(force=True)

    def restore(self) -> None:
        """Give the quantizers this callback froze their configured pace back.

        Training ends with it; after a ``fit`` that raised, call it to give the model back at once.

        Examples
        --------
        >>> import hgq
        >>> settle = hgq.callbacks.SettleBits(10)
        >>> try:  # doctest: +SKIP
        ...     model.fit(x, y, epochs=60, callbacks=[settle])
        ... finally:
        ...     settle.restore()
        """
        if self._frozen is not None:
            self._set_pace(self._frozen, 1.0)
        self._factor = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()  # what an interrupted fit left (Keras skips on_train_end when fit raises)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        total = (self.params or {}).get('epochs')
        if total is None:
            raise ValueError('SettleBits: the number of epochs of this fit is unknown (it needs model.fit(epochs=...))')
        factor = 0.0 if epoch >= total - self.epochs else 1.0
        if factor != self._factor:
            self._set_pace(self.model, factor)
            self._factor = factor

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        log_ebops(self.model, logs)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.restore()


@dataclass(frozen=True)
class ParetoPoint:
    """A checkpoint on a Pareto front: the saved model, the epoch (from 1), and its metric values."""

    path: Path
    epoch: int
    values: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {'file': self.path.name, 'epoch': self.epoch, 'values': self.values}


def _better_or_equal(a: float, b: float, side: str) -> bool:
    return a >= b if side == 'max' else a <= b


def _weakly_dominates(a: dict[str, float], b: dict[str, float], sides: dict[str, str]) -> bool:
    """``a`` is at least as good as ``b`` in every metric."""
    return all(_better_or_equal(a[m], b[m], side) for m, side in sides.items())


def non_dominated(points: Sequence[ParetoPoint], sides: dict[str, str]) -> list[ParetoPoint]:
    """The points that :class:`ParetoFront` would keep if they arrived in this order (e.g. fronts of several runs).

    A point is dropped if a point kept before it is at least as good in every metric (so of equal points the first
    stays), and it drops the kept points that it matches or beats in every metric.

    Examples
    --------
    >>> from pathlib import Path
    >>> pts = [ParetoPoint(Path(f'{n}.keras'), 1, {'acc': a, 'ebops': c}) for n, a, c in
    ...        [('a', 0.90, 100), ('b', 0.95, 300), ('c', 0.95, 200), ('d', 0.90, 100)]]
    >>> [p.path.stem for p in non_dominated(pts, {'acc': 'max', 'ebops': 'min'})]
    ['a', 'c']
    """
    front: list[ParetoPoint] = []
    for point in points:
        if any(_weakly_dominates(kept.values, point.values, sides) for kept in front):
            continue
        front = [kept for kept in front if not _weakly_dominates(point.values, kept.values, sides)] + [point]
    return front


def _write_json_atomic(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=1))


def read_front(directory: str | os.PathLike) -> list[ParetoPoint]:
    """The checkpoints of a front saved by :class:`ParetoFront`, sorted by the last metric (EBOPs by default).

    Examples
    --------
    >>> import hgq
    >>> points = hgq.callbacks.read_front('ckpt/')  # doctest: +SKIP
    >>> [(p.path.name, p.values['ebops']) for p in points]  # doctest: +SKIP
    """
    directory = Path(directory)
    index = directory / FRONT_INDEX
    if not index.is_file():
        raise FileNotFoundError(f'{directory} holds no Pareto front ({FRONT_INDEX} is missing)')
    content = json.loads(index.read_text())
    points = [ParetoPoint(directory / p['file'], int(p['epoch']), dict(p['values'])) for p in content['points']]
    last = content['metrics'][-1]
    return sorted((p for p in points if p.path.is_file()), key=lambda p: (p.values[last], p.epoch))


class ParetoFront(keras.callbacks.Callback):
    """Save every model that no earlier checkpoint matches or beats in all metrics; delete dominated ones.

    After each epoch the metric values are read from the logs (``ebops`` is logged by this callback). If no
    saved checkpoint is at least as good in every metric, the model is saved as
    ``epoch=0012-val_accuracy=0.9722-ebops=1234.5.keras`` and every checkpoint it dominates is deleted, so the
    directory always holds the current Pareto front. ``front.json`` indexes it (see :func:`read_front`). Epochs
    count from 1, as in Keras's progress output. Files are written atomically (saved under a temporary name,
    then renamed).

    With ``calibration_data`` the front holds deployable models: after each epoch the model is calibrated on it
    (:func:`hgq.calibrate`), the ``val_*`` metrics are measured on the calibrated model with ``validation_data``
    and ``ebops`` are its exact EBOPs; dominance is decided on those values (other metrics come from the logs),
    the calibrated model is saved, and then every variable calibration changed is put back, so that training goes
    on exactly as without the option. The epoch logs keep Keras's values and gain the calibrated ones as
    ``calibrated_<metric>`` (e.g. ``calibrated_val_accuracy``, ``calibrated_ebops``). Without it the front is
    ranked on the logs, whose ``val_*`` metrics come from the tracked ranges of training: an input whose last batch
    lacked its largest values has lost integer bits there, and wraps in that evaluation. An epoch whose model cannot
    be calibrated (:class:`hgq.calibrate.CalibrationError`, :class:`hgq.exactness.InexactError`) is skipped with a
    warning.

    Parameters
    ----------
    directory : path
        Where checkpoints go (created if needed).
    metrics : sequence of str
        Log keys to trade off, e.g. ``('val_accuracy', 'ebops')`` or ``('val_loss', 'ebops')``.
    sides : sequence of {'max', 'min'}
        Whether each metric is to be maximized or minimized.
    resume : bool
        Continue a front already indexed in ``directory`` (with the same metrics); ``False`` deletes its files.
    calibration_data : array or list of arrays, optional
        Inputs to calibrate each epoch's model on (typically the training set); see above.
    validation_data : tuple, optional
        ``(x, y)`` or ``(x, y, sample_weight)`` on which the calibrated model's ``val_*`` metrics are measured
        (``Model.evaluate``); needed with ``calibration_data`` when a metric starts with ``val_``.
    batch_size : int
        Batch size of the calibration and evaluation passes.

    Examples
    --------
    >>> import hgq
    >>> front = hgq.callbacks.ParetoFront('ckpt/', metrics=('val_loss', 'ebops'), sides=('min', 'min'))
    >>> # model.fit(x, y, validation_data=(xv, yv), callbacks=[front]); front.points lists the checkpoints
    >>> # a front of calibrated checkpoints, ranked on their validation accuracy and exact EBOPs:
    >>> # hgq.callbacks.ParetoFront('ckpt/', calibration_data=x, validation_data=(xv, yv))
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        metrics: Sequence[str] = ('val_accuracy', 'ebops'),
        sides: Sequence[str] = ('max', 'min'),
        resume: bool = True,
        calibration_data: Any = None,
        validation_data: tuple[Any, ...] | None = None,
        batch_size: int = 1024,
    ) -> None:
        super().__init__()
        metrics, sides = tuple(metrics), tuple(sides)
        if len(metrics) != len(sides) or not metrics:
            raise ValueError(f'ParetoFront: metrics {metrics} and sides {sides} must be non-empty and of equal length')
        bad = [s for s in sides if s not in SIDES]
        if bad:
            raise ValueError(f'ParetoFront: sides must each be one of {SIDES}, got {bad}')
        if len(set(metrics)) != len(metrics):
            raise ValueError(f'ParetoFront: metrics must be distinct, got {metrics}')
        if calibration_data is None and validation_data is not None:
            raise ValueError('ParetoFront: validation_data scores the calibrated model; pass calibration_data too')
        if calibration_data is not None and validation_data is None and any(m.startswith('val_') for m in metrics):
            raise ValueError(f'ParetoFront: metrics {metrics} need validation_data to score the calibrated model')
        if validation_data is not None and not (isinstance(validation_data, tuple) and len(validation_data) in (2, 3)):
            raise ValueError('ParetoFront: validation_data must be a tuple (x, y) or (x, y, sample_weight)')
        self.calibration_data = calibration_data
        self.validation_data = validation_data
        self.batch_size = int(batch_size)
        self.directory = Path(directory)
        self.sides = dict(zip(metrics, sides, strict=True))
        self.directory.mkdir(parents=True, exist_ok=True)
        for partial in self.directory.glob('.partial-*.keras'):  # left by a run killed while saving
            partial.unlink()
        self.points: list[ParetoPoint] = self._existing_points(resume)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(self.sides)

    @property
    def calibrated(self) -> bool:
        """True when the checkpoints are calibrated models, ranked on their own metrics."""
        return self.calibration_data is not None

    def _existing_points(self, resume: bool) -> list[ParetoPoint]:
        if not (self.directory / FRONT_INDEX).is_file():
            return []
        content = json.loads((self.directory / FRONT_INDEX).read_text())
        if list(content['metrics']) != list(self.metrics) or list(content['sides']) != list(self.sides.values()):
            raise ValueError(
                f'ParetoFront: {self.directory} holds a front of metrics {content["metrics"]} {content["sides"]}; '
                f'use another directory for {self.metrics}'
            )
        if bool(content.get('calibrated', False)) != self.calibrated:
            state = 'calibrated' if content.get('calibrated', False) else 'uncalibrated'
            raise ValueError(
                f'ParetoFront: {self.directory} holds a front of {state} checkpoints; use another directory'
            )
        points = read_front(self.directory)
        if resume:
            return points
        for point in points:
            point.path.unlink(missing_ok=True)
        (self.directory / FRONT_INDEX).unlink()
        return []

    def _values(self, logs: dict[str, Any]) -> dict[str, float]:
        missing = [m for m in self.metrics if m not in logs]
        if missing:
            hint = ' (pass validation_data to fit)' if any(m.startswith('val_') for m in missing) else ''
            raise KeyError(f'ParetoFront: metrics {missing} are not in the epoch logs {sorted(logs)}{hint}')
        return {m: float(logs[m]) for m in self.metrics}

    def _file_name(self, epoch: int, values: dict[str, float]) -> str:
        stem = '-'.join([f'epoch={epoch:04d}', *(f'{m}={v:.6g}' for m, v in values.items())])
        taken = {p.path.name for p in self.points}
        name, n = f'{stem}.keras', 1
        while name in taken:
            name, n = f'{stem}-{n}.keras', n + 1
        return name

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {} if logs is None else logs
        if not self.calibrated:
            log_ebops(self.model, logs)
            self._consider(epoch, self._values(logs))
            return
        if not math.isfinite(log_ebops(self.model, logs)):
            return  # EBOPs are nan when weights are not finite: a diverged model has nothing to calibrate
        quantizers = wrap_quantizers(self.model)
        saved = [(v, ops.convert_to_numpy(v)) for q in quantizers for v in q.non_trainable_weights]
        try:
            try:
                logs.update(self._calibrated_logs())
            except (CalibrationError, InexactError) as err:
                warnings.warn(
                    f'ParetoFront: epoch {epoch + 1} skipped, its model cannot be calibrated: {err}', stacklevel=2
                )
                return
            calibrated = {m: logs.get(f'calibrated_{m}', logs.get(m)) for m in self.metrics}
            self._consider(epoch, self._values({k: v for k, v in calibrated.items() if v is not None}))
        finally:
            for variable, value in saved:
                variable.assign(value)

    def _calibrated_logs(self) -> dict[str, float]:
        """Calibrate the model and measure it: ``calibrated_ebops`` and ``calibrated_val_<metric>``."""
        values = {'calibrated_ebops': calibrate(self.model, self.calibration_data, self.batch_size)}
        if self.validation_data is not None:
            x, y, *weight = self.validation_data
            scores = self.model.evaluate(
                x,
                y,
                sample_weight=weight[0] if weight else None,
                batch_size=self.batch_size,
                verbose=0,
                return_dict=True,
            )
            values.update((f'calibrated_val_{name}', float(value)) for name, value in scores.items())
        return values

    def _consider(self, epoch: int, values: dict[str, float]) -> None:
        """Save the model as a checkpoint of epoch ``epoch`` (from 0) with ``values`` unless the front dominates it."""
        if not all(math.isfinite(v) for v in values.values()):
            return  # a diverged model (EBOPs are nan when weights are not finite) is never a checkpoint
        if any(_weakly_dominates(p.values, values, self.sides) for p in self.points):
            return
        number = epoch + 1  # as Keras's progress output counts
        point = ParetoPoint(self.directory / self._file_name(number, values), number, values)
        write_atomic(point.path, self.model.save)
        dominated = [p for p in self.points if _weakly_dominates(values, p.values, self.sides)]
        self.points = [p for p in self.points if p not in dominated] + [point]
        self._write_index()
        for old in dominated:
            if old.path != point.path:
                old.path.unlink(missing_ok=True)

    def _write_index(self) -> None:
        content = {
            'metrics': list(self.metrics),
            'sides': list(self.sides.values()),
            'calibrated': self.calibrated,
            'points': [p.to_json() for p in self.points],
        }
        _write_json_atomic(self.directory / FRONT_INDEX, content)
