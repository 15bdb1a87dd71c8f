"""Where the CPU time of an hgq training step goes: the digits MLP of ``speed.py`` with one piece taken away at a time.

Every variant trains in a fresh process of its own next to float Keras (TensorFlow backend, Keras defaults: no
XLA on a CPU): both are built, compiled and fitted once to trace their training steps, then they train in turns of
``--epochs-per-turn`` epochs, A/B/A/B for ``--rounds`` rounds, so that a change of load on a shared machine hits
both alike. (Ten models in one process made every hgq variant's epochs two to three times slower than in a process
of its own, while float's did not change, so one process per variant it is.) The figure is process CPU time per
steady epoch (the median epoch of a turn) and its ratio to float's in the same round; the table gives the median
over all rounds of all processes (``--passes`` processes per variant) and the range. ``nodes`` counts the
operations of the traced training step (``model.train_step`` under ``tf.function``, before TensorFlow's graph
optimizer; nodes of nested functions included).

Variants (64-32-10 ``HDense`` MLP, ``beta = 1e-6``, Adam 3e-3, batch 64, 22 steps per epoch, as ``speed.py``):

- ``float``: ``keras.layers.Dense``.
- ``hgq``: the defaults, with :class:`hgq.callbacks.EBOPsLogger` (exact EBOPs after every epoch), as ``speed.py``.
- ``no logger``: the same without the logger; every variant below is this one with one change.
- ``iq per tensor``: input quantizers with ``granularity='tensor'`` (one bitwidth per layer input).
- ``bits_lr_scale=1``: every quantizer (the step variables stay: the pace is a variable, see ``ScaledStep``).
- ``bits_decay=0``: every quantizer.
- ``no step vars``: quantizers built without step variables (bitwidths learn directly at the optimizer's pace;
  this also removes the ``bits_decay`` pull, which is defined over the step variables). Measurement only.
- ``no tracking``: WRAP range tracking skipped in training (``_track`` replaced by a no-op). Measurement only.
- ``no EBOPs term``: the ``beta * EBOPs`` loss of each layer left out. Measurement only.
- ``all cuts``: per-tensor inputs, no step variables, no tracking, no EBOPs term (what is left: quantizing inputs,
  kernels and biases and learning their bitwidths).

The "measurement only" variants change what training does; they show the price of a piece, not a setting::

    python benchmarks/speed_ablation.py --passes 2 --rounds 6
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from speed import BETA, LEARNING_RATE, MODELS, load_data, machine  # noqa: E402

from hgq.callbacks import EBOPsLogger  # noqa: E402
from hgq.layers import HDense  # noqa: E402
from hgq.layers.kernel import HKernelLayer  # noqa: E402
from hgq.quantizer import ActivationQuantizer, _FixedPointQuantizerBase  # noqa: E402


@contextlib.contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` is ``value`` inside the block (used while a variant is built and traced)."""
    old = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _bits_variable_without_step(self, name, shape, value, trainable=True):
    initializer = value if callable(value) else keras.initializers.Constant(value)
    return self.add_weight(name=name, shape=shape, initializer=initializer, trainable=trainable)


def _no_kernel_ebops(self, kernel, qkernel=None):
    return keras.ops.convert_to_tensor(0.0)


class Variant:
    """A model to time: quantizer settings for every ``HDense`` and patches in force while it is built and traced."""

    def __init__(
        self,
        name: str,
        iq: dict | None = None,
        wq: dict | None = None,
        logger: bool = False,
        patches: tuple[tuple[Any, str, Any], ...] = (),
        is_float: bool = False,
    ) -> None:
        self.name, self.iq, self.wq, self.logger, self.patches, self.is_float = name, iq, wq, logger, patches, is_float

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for owner, attr, value in self.patches:
                stack.enter_context(replaced(owner, attr, value))
            yield

    def build(self, n_in: int, hidden: tuple[int, ...], n_out: int) -> keras.Model:
        widths = [*hidden, n_out]
        activations = ['relu'] * len(hidden) + [None]
        if self.is_float:
            layers = [keras.layers.Dense(w, activation=a) for w, a in zip(widths, activations, strict=True)]
        else:
            wq = self.wq or {}
            layers = [
                HDense(
                    w,
                    activation=a,
                    beta=BETA,
                    input_quantizer=dict(self.iq or {}),
                    kernel_quantizer=dict(wq),
                    bias_quantizer=dict(wq),
                )
                for w, a in zip(widths, activations, strict=True)
            ]
        return keras.Sequential([keras.Input((n_in,)), *layers])


NO_STEPS = (_FixedPointQuantizerBase, '_add_bits_variable', _bits_variable_without_step)
NO_TRACKING = (ActivationQuantizer, '_track', lambda self, x: None)
NO_EBOPS = (HKernelLayer, 'kernel_ebops', _no_kernel_ebops)
TENSOR = {'granularity': 'tensor'}

VARIANTS = [
    Variant('float', is_float=True),
    Variant('hgq', logger=True),
    Variant('no logger'),
    Variant('iq per tensor', iq=TENSOR),
    Variant('bits_lr_scale=1', iq={'bits_lr_scale': 1.0}, wq={'bits_lr_scale': 1.0}),
    Variant('bits_decay=0', iq={'bits_decay': 0.0}, wq={'bits_decay': 0.0}),
    Variant('no step vars', patches=(NO_STEPS,)),
    Variant('no tracking', patches=(NO_TRACKING,)),
    Variant('no EBOPs term', patches=(NO_EBOPS,)),
    Variant('all cuts', iq=TENSOR, patches=(NO_STEPS, NO_TRACKING, NO_EBOPS)),
]


class EpochTimer(keras.callbacks.Callback):
    """Process CPU and wall seconds of every epoch; runs after the other callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = (time.process_time(), time.perf_counter())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.cpu.append(time.process_time() - self._start[0])
        self.wall.append(time.perf_counter() - self._start[1])


def count_nodes(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> int:
    """Operations of the model's traced training step, nested function bodies included."""
    import tensorflow as tf

    spec = (tf.TensorSpec((batch_size, *x.shape[1:]), tf.float32), tf.TensorSpec((batch_size,), tf.int64))
    graph_def = tf.function(model.train_step).get_concrete_function(spec).graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def prepare(variant: Variant, x: np.ndarray, y: np.ndarray, spec: dict) -> tuple[keras.Model, list, int]:
    keras.utils.set_random_seed(0)
    with variant.scope():
        model = variant.build(x.shape[1], spec['hidden'], int(y.max()) + 1)
        model.compile(
            keras.optimizers.Adam(LEARNING_RATE),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=['accuracy'],
        )
        callbacks = [EBOPsLogger()] if variant.logger else []
        model.fit(x, y, epochs=1, batch_size=spec['batch_size'], callbacks=callbacks, verbose=0)  # traces the step
        nodes = count_nodes(model, x, y, spec['batch_size'])
    return model, callbacks, nodes


def turn(model: keras.Model, callbacks: list, x: np.ndarray, y: np.ndarray, batch_size: int, epochs: int):
    timer = EpochTimer()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, callbacks=[*callbacks, timer], verbose=0)
    return statistics.median(timer.cpu), statistics.median(timer.wall)


def summarize(name: str, rows: list[tuple[float, float]], float_rows: list[tuple[float, float]]) -> dict[str, Any]:
    cpu = [r[0] for r in rows]
    wall = [r[1] for r in rows]
    ratio = [r[0] / f[0] for r, f in zip(rows, float_rows, strict=True)]
    wall_ratio = [r[1] / f[1] for r, f in zip(rows, float_rows, strict=True)]
    return {
        'name': name,
        'cpu': statistics.median(cpu),
        'wall': statistics.median(wall),
        'ratio': statistics.median(ratio),
        'ratio_range': (min(ratio), max(ratio)),
        'wall_ratio': statistics.median(wall_ratio),
    }


def worker(name: str, rounds: int, epochs_per_turn: int) -> dict[str, Any]:
    """Float and one variant in this process, A/B/A/B: per-round epoch CPU/wall of both and the node counts."""
    variants = [v for v in VARIANTS if v.is_float or v.name == name]
    spec = MODELS['digits']
    x, y, _ = load_data('digits', 1)
    prepared = {v.name: prepare(v, x, y, spec) for v in variants}
    results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            model, callbacks, _ = prepared[variant.name]
            results[variant.name].append(turn(model, callbacks, x, y, spec['batch_size'], epochs_per_turn))
    return {'results': results, 'nodes': {n: p[2] for n, p in prepared.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=6, help='A/B rounds inside each process')
    parser.add_argument('--epochs-per-turn', type=int, default=3)
    parser.add_argument('--passes', type=int, default=1, help='fresh processes per variant (results pooled)')
    parser.add_argument('--only', nargs='*', help='variant names to run')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if keras.backend.backend() != 'tensorflow':
        raise SystemExit(f'speed_ablation.py times the TensorFlow backend; KERAS_BACKEND is {keras.backend.backend()}')
    if args.worker:
        print(json.dumps(worker(args.worker, args.rounds, args.epochs_per_turn)))
        return

    names = [v.name for v in VARIANTS if not v.is_float and (not args.only or v.name in args.only)]
    load_before = os.getloadavg()
    pooled: dict[str, dict[str, Any]] = {}
    for p in range(args.passes):
        for name in names if p % 2 == 0 else names[::-1]:
            command = [sys.executable, __file__, '--worker', name, '--rounds', str(args.rounds)]
            command += ['--epochs-per-turn', str(args.epochs_per_turn)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f'{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
            out = json.loads(lines[-1])
            entry = pooled.setdefault(name, {'float': [], 'variant': [], 'nodes': out['nodes']})
            entry['float'] += out['results']['float']
            entry['variant'] += out['results'][name]
            print(f'pass {p + 1}: {name} done, load average {os.getloadavg()[0]:.1f}', flush=True)
    load_after = os.getloadavg()

    info = machine()
    print(
        f'\nMachine: {info["cpu"]}, {info["logical_cores"]} logical cores, {info["memory_gib"]} GiB; '
        f'Keras {keras.__version__}, TensorFlow backend (no XLA)'
    )
    print(
        f'Load average (1/5/15 min) before: {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, '
        f'after: {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f}'
    )
    print(
        f'digits 64-32-10, batch 64, 22 steps/epoch; {args.passes} process(es) per variant, each {args.rounds} '
        f'A/B rounds of {args.epochs_per_turn} epochs per turn\n'
    )
    print('| variant | epoch CPU s | float epoch CPU s | CPU / float, median (range) | wall / float | nodes (float) |')
    print('|---|---|---|---|---|---|')
    for name in names:
        entry = pooled[name]
        s = summarize(name, entry['variant'], entry['float'])
        lo, hi = s['ratio_range']
        float_cpu = statistics.median(r[0] for r in entry['float'])
        print(
            f'| {name} | {s["cpu"]:.4f} | {float_cpu:.4f} | {s["ratio"]:.2f}x ({lo:.2f}-{hi:.2f}) '
            f'| {s["wall_ratio"]:.2f}x | {entry["nodes"][name]} ({entry["nodes"]["float"]}) |'
        )


if __name__ == '__main__':
    main()
