"""LUTs of every tool's benchmark models, by one flow: rebuild each dumped model as an hgq model with its fixed
formats, prove it computes what the tool computed, and measure it with ``hgq.synth`` (Verilog checked bit for bit,
yosys LUTs).

The training scripts (``train_hgq.py``, ``train_hgq2.py``, ``train_qkeras.py``, each in its tool's own virtual
environment) dump, besides kernels and input widths, the complete fixed-point format ``(k, i, f)`` of every element
of every activation quantizer with its rounding and overflow modes, the quantized biases, the activations, and the
tool's own outputs on ``bench_common.equivalence_inputs(x_test)`` (the test set, as many random inputs up to 1.5
spans beyond its range, as many on a ``2**-8`` grid that hits the ties of coarse formats). This script, in the hgq
venv:

1. copies the dumps it uses to ``work/lut/dumps/<dataset>/`` (``run_peers.sh`` deletes ``work/dumps/<dataset>``;
   ``--copy DIR`` copies from another dump directory);
2. rebuilds each as ``HQuantize -> HDense -> HDense`` whose quantizers hold exactly the dumped formats (WRAP:
   calibrated range; SAT: learned integer bits set; weights: fractional bits down to each weight's lowest set bit,
   so that the quantized kernel and bias are the dumped ones);
3. requires ``np.array_equal`` between the rebuilt model's outputs and the tool's own on the equivalence inputs
   (a model that differs is reported and not measured);
4. estimates LUTs with ``hgq.cost.lut_estimate`` and, per tool and accuracy threshold, synthesizes the models whose
   estimate is within ``--margin`` of the cheapest estimate reaching it (``--all``: every model);
5. writes ``results/<dataset>_lut.{json,md}``: per tool and threshold, the fewest yosys LUTs among the synthesized
   models that reach it.

Run in the hgq venv (needs yosys and iverilog)::

    nice python benchmarks/synth_front.py --dataset digits --copy benchmarks/work/dumps/digits  # dumps with formats
    nice python benchmarks/synth_front.py --dataset digits                 # check, estimate, synthesize, table
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from bench_common import RESULTS_DIR, WORK_DIR, equivalence_inputs, load_dump, load_split

import hgq
from hgq.cost import cost_terms, lut_estimate
from hgq.layers import HDense, HQuantize
from hgq.quantizer import ActivationQuantizer, WeightQuantizer
from hgq.rtl.flow import probe_inputs

LUT_DIR = WORK_DIR / 'lut'
#: accuracy thresholds of each data set's EBOPs comparison (benchmarks/README.md)
THRESHOLDS = {'digits': (0.90, 0.93, 0.95, 0.96, 0.97), 'fashion_mnist': (0.80, 0.83, 0.85, 0.86, 0.87)}
TOOL_PREFIXES = {'hgq (ours)': 'hgq_', 'HGQ2 0.2.0': 'hgq2_', 'QKeras 0.9.0': 'qkeras_'}


# -- rebuilding a dumped model -----------------------------------------------------------------------------------


def fractional_bits(values: np.ndarray) -> np.ndarray:
    """Fewest fractional bits that hold each value exactly (0 for zeros; negative for multiples of 2, 4, ...).

    Examples
    --------
    >>> fractional_bits(np.array([0.0, 0.75, 6.0, -0.3125])).tolist()
    [0, 2, -1, 4]
    """
    mag = np.abs(np.asarray(values, dtype=np.float64))
    nonzero = mag > 0
    mantissa, exponent = np.frexp(np.where(nonzero, mag, 1.0))
    codes = (mantissa * 2.0**53).astype(np.int64)
    trailing = np.log2((codes & -codes).astype(np.float64)).astype(np.int64)
    return np.where(nonzero, 53 - exponent - trailing, 0).astype(np.int64)


def _activation_quantizer(mode: dict[str, str], kif: np.ndarray, name: str) -> ActivationQuantizer:
    signed = bool(kif[0].max() > 0)
    if mode['overflow_mode'] != 'WRAP' and signed and kif[0].min() == 0:
        raise ValueError(f'{name}: a saturating quantizer with mixed signed and unsigned elements is not rebuilt')
    return ActivationQuantizer(
        granularity='element',
        overflow_mode=mode['overflow_mode'],
        round_mode=mode['round_mode'],
        signed=signed,
        i_init=0.0,
        f_init=0.0,
        name=name,
    )


def _set_format(q: ActivationQuantizer, kif: np.ndarray) -> None:
    """Give ``q`` exactly the per-element format ``kif`` (3, n): the variables ``q.kif()`` is computed from."""
    k, i, f = (np.asarray(a, dtype=np.float64).reshape(q.f.shape) for a in kif)
    live = k + i + f > 0
    q.f.assign(f)
    if q.tracks_range:
        # kif() takes k from the sign of the range and i from the rounded range: [-2**i * k, 2**i - 2**-f] gives both.
        q.vmax.assign(np.where(live, 2.0**i - 2.0**-f, 0.0))
        q.vmin.assign(np.where(live & (k > 0), -(2.0**i), 0.0))
        q.train_peak.assign(np.where(live, 2.0**64, 0.0))  # 0: pruned, exactly 0 whatever the input
        q.range_started.assign(1.0)
        q.calibrated.assign(1.0)
    else:
        q.i.assign(i)
    got = np.stack(q.kif()).reshape(3, -1)
    expected = np.stack([np.where(live, k, 0), np.where(live, i, -f), f]).reshape(3, -1)
    if not np.array_equal(got, expected):
        raise AssertionError(f'{q.name}: could not set the format exactly')


def _set_weights(variable: keras.Variable, quantizer: WeightQuantizer, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float32)
    variable.assign(values)
    quantizer.f.assign(fractional_bits(values).astype(np.float32))
    if not np.array_equal(keras.ops.convert_to_numpy(quantizer(variable)), values):
        raise AssertionError(f'{quantizer.name}: the quantized weights differ from the dumped ones')


def build_model(dump: dict[str, Any]) -> keras.Model:
    """``HQuantize -> HDense -> HDense`` holding exactly the formats, weights and biases of a dump."""
    formats, extra = dump['meta']['formats'], dump['extra']
    kernels = dump['kernels']
    input_name = 'input' if 'kif_input' in extra else '0'
    quantizers = {name: (formats['quantizers'][name], extra[f'kif_{name}']) for name in formats['quantizers']}
    x = keras.Input((kernels[0].shape[0],))
    first = HQuantize(input_quantizer=_activation_quantizer(*quantizers[input_name], 'q_input'), name='quantize')
    layers = [first]
    for n, kernel in enumerate(kernels):
        activation = formats['activations'][n]
        layers.append(
            HDense(
                kernel.shape[1],
                activation='relu' if activation == 'relu' else None,
                input_quantizer=_activation_quantizer(*quantizers[str(n)], f'q_{n}'),
                kernel_quantizer=WeightQuantizer(granularity='element', f_init=0.0, name=f'kq_{n}'),
                bias_quantizer=WeightQuantizer(granularity='element', f_init=0.0, name=f'bq_{n}'),
                name=f'dense_{n}',
            )
        )
        if activation not in (None, 'linear', 'relu'):
            raise ValueError(f'dense_{n}: activation {activation!r} is not rebuilt')
    y = x
    for layer in layers:
        y = layer(y)
    model = keras.Model(x, y, name='rebuilt')
    _set_format(first.input_quantizer, quantizers[input_name][1])
    for n, layer in enumerate(layers[1:]):
        _set_format(layer.input_quantizer, quantizers[str(n)][1])
        _set_weights(layer.kernel, layer.kernel_quantizer, kernels[n])
        _set_weights(layer.bias, layer.bias_quantizer, extra[f'bias_{n}'])
    return model


def outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's outputs in inference mode (one eager call: these models are small)."""
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), dtype=np.float32)


def equivalence(model: keras.Model, dump: dict[str, Any], x_test: np.ndarray) -> dict[str, Any]:
    """Samples of ``equivalence_inputs`` where the rebuilt model's outputs differ from the tool's own (exactly)."""
    x = equivalence_inputs(x_test)
    ours = outputs(model, x)
    theirs = np.asarray(dump['extra']['equivalence_logits'], dtype=np.float32)
    differ = [not np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)]
    n = len(x_test)
    return {
        'n_checked': len(x),
        'mismatches': int(sum(differ)),
        'mismatches_test': int(sum(differ[:n])),
        'mismatches_beyond': int(sum(differ[n : 2 * n])),
        'mismatches_grid': int(sum(differ[2 * n :])),
    }


# -- the benchmark ------------------------------------------------------------------------------------------------


def copy_dumps(dataset: str, source: Path) -> None:
    """Copy the dumps that hold full formats to ``work/lut/dumps/<dataset>/`` (never overwriting a different file)."""
    target = LUT_DIR / 'dumps' / dataset
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob('*.npz')):
        if 'formats' not in load_dump(path)['meta']:
            continue
        dest = target / path.name
        if dest.exists() and dest.read_bytes() != path.read_bytes():
            dest = target / f'{path.stem}_{int(path.stat().st_mtime)}.npz'
        shutil.copy2(path, dest)
        print(f'copied {path.name} -> {dest.relative_to(WORK_DIR)}', flush=True)


def tool_of(name: str) -> str:
    for tool, prefix in sorted(TOOL_PREFIXES.items(), key=lambda item: -len(item[1])):
        if name.startswith(prefix):
            return tool
    raise ValueError(f'{name}: unknown tool prefix')


def accuracy(model: keras.Model, data: dict[str, np.ndarray]) -> float:
    return float(np.mean(np.argmax(outputs(model, data['x_test']), axis=-1) == data['y_test']))


def check_all(dataset: str, data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rebuild, check and estimate every copied dump; one row each (no synthesis yet)."""
    rows = []
    for path in sorted((LUT_DIR / 'dumps' / dataset).glob('*.npz')):
        dump = load_dump(path)
        model = build_model(dump)
        row = {
            'dump': path.name,
            'tool': dump['meta']['tool'],
            'config': dump['meta']['config'],
            'seed': dump['meta']['seed'],
            'tool_accuracy': dump['meta']['test_accuracy'],
            'test_accuracy': accuracy(model, data),
            'ebops': float(hgq.ebops(model)),
            'estimate_lut': lut_estimate(model),
            'terms': cost_terms(model),
            'equivalence': equivalence(model, dump, data['x_test']),
        }
        rows.append(row)
        eq = row['equivalence']
        print(
            f'{path.name}: acc {row["test_accuracy"]:.4f} (tool {row["tool_accuracy"]:.4f}), EBOPs {row["ebops"]:.0f}, '
            f'estimate {row["estimate_lut"]:.0f} LUT, {eq["mismatches"]}/{eq["n_checked"]} differ from the tool',
            flush=True,
        )
    return rows


def selected(rows: list[dict[str, Any]], margin: float, thresholds: tuple[float, ...]) -> set[str]:
    """Per tool and threshold, the equivalent models within ``margin`` of the cheapest estimate reaching it."""
    chosen = set()
    for tool in {r['tool'] for r in rows}:
        ok = [r for r in rows if r['tool'] == tool and r['equivalence']['mismatches'] == 0]
        for threshold in thresholds:
            reach = [r for r in ok if r['test_accuracy'] >= threshold]
            if reach:
                best = min(r['estimate_lut'] for r in reach)
                chosen |= {r['dump'] for r in reach if r['estimate_lut'] <= best * (1 + margin)}
    return chosen


def synth_dir(dataset: str, row: dict[str, Any]) -> Path:
    return LUT_DIR / 'synth' / dataset / Path(row['dump']).stem


def synthesize(dataset: str, row: dict[str, Any], n_check: int) -> dict[str, Any]:
    """``hgq.synth`` of one rebuilt model (or its earlier ``synth.json``)."""
    out = synth_dir(dataset, row)
    synth_file = out / 'synth.json'
    if synth_file.is_file():
        result = json.loads(synth_file.read_text())
        print(f'{row["dump"]}: reusing {synth_file.relative_to(WORK_DIR)}', flush=True)
    else:
        model = build_model(load_dump(LUT_DIR / 'dumps' / dataset / row['dump']))
        # random probes (half beyond the calibrated range) and the equivalence inputs (their grid hits ties)
        check = np.concatenate([probe_inputs(model, n_check), equivalence_inputs(load_split(dataset)['x_test'])])
        result = hgq.synth(model, out, check=check, verbose=True)
    keys = ('lut', 'ff', 'carry', 'inv', 'depth', 'estimate_lut', 'mismatches', 'n_checked', 'seconds', 'synthesizer')
    return {f'da4ml_{k}' if k == 'estimate_lut' else k: result[k] for k in keys}


def table(rows: list[dict[str, Any]], thresholds: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per threshold and tool: the fewest LUTs among the synthesized models that reach it."""
    out = []
    for threshold in thresholds:
        entry: dict[str, Any] = {'accuracy_at_least': threshold}
        for tool in TOOL_PREFIXES:
            reach = [r for r in rows if r['tool'] == tool and r.get('lut') is not None]
            reach = [r for r in reach if r['test_accuracy'] >= threshold and r['mismatches'] == 0]
            best = min(reach, key=lambda r: r['lut'], default=None)
            entry[tool] = None if best is None else {k: best[k] for k in ('dump', 'config', 'seed', 'test_accuracy',
                                                                          'lut', 'ebops', 'estimate_lut')}  # fmt: skip
        out.append(entry)
    return out


def write_markdown(path: Path, dataset: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    tools = list(TOOL_PREFIXES)
    lines = [f'# Fewest yosys LUTs reaching an accuracy ({dataset})', '']
    lines += ['| test accuracy >= | ' + ' | '.join(tools) + ' | ours / best peer |', '|---' * (len(tools) + 2) + '|']
    for entry in summary:
        cells = []
        for tool in tools:
            best = entry[tool]
            cells.append('-' if best is None else f'{best["lut"]:,} ({best["config"]}, s{best["seed"]}, '
                                                   f'{best["test_accuracy"]:.3f})')  # fmt: skip
        peers = [entry[t]['lut'] for t in tools[1:] if entry[t] is not None]
        ours = entry[tools[0]]
        ratio = f'{ours["lut"] / min(peers):.2f}x' if ours is not None and peers else '-'
        lines.append(f'| {entry["accuracy_at_least"]:.2f} | ' + ' | '.join(cells) + f' | {ratio} |')
    lines += ['', '## Every model', '']
    lines += ['| dump | tool | test acc | EBOPs | estimate | yosys LUT | estimate err | equivalence | RTL check |']
    lines += ['|---|---|---|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: (r['tool'], r['ebops'])):
        eq = r['equivalence']
        lut = r.get('lut')
        err = f'{(r["estimate_lut"] / lut - 1) * 100:+.1f}%' if lut else '-'
        rtl = f'{r["mismatches"]}/{r["n_checked"]}' if lut is not None else '-'
        lines.append(
            f'| {r["dump"]} | {r["tool"]} | {r["test_accuracy"]:.4f} | {r["ebops"]:,.0f} | {r["estimate_lut"]:,.0f} | '
            f'{"-" if lut is None else f"{lut:,}"} | {err} | {eq["mismatches"]}/{eq["n_checked"]} | {rtl} |'
        )
    path.write_text('\n'.join(lines) + '\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default='digits', choices=sorted(THRESHOLDS))
    parser.add_argument('--copy', type=Path, metavar='DIR', help='copy the dumps with full formats from DIR, then stop')
    parser.add_argument('--margin', type=float, default=0.0, help='synthesize models within this of the cheapest')
    parser.add_argument('--all', action='store_true', help='synthesize every equivalent model')
    parser.add_argument('--n-check', type=int, default=2000, help='probe inputs for the Verilog check')
    parser.add_argument('--no-synth', action='store_true', help='check and estimate only')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='only the dumps of these seeds')
    parser.add_argument('--only', nargs='+', default=None, help='synthesize these dumps (file names) only')
    args = parser.parse_args()
    if args.copy:
        copy_dumps(args.dataset, args.copy)
        return
    start = time.perf_counter()
    data = load_split(args.dataset)
    rows = [r for r in check_all(args.dataset, data) if args.seeds is None or r['seed'] in args.seeds]
    equivalent = {r['dump'] for r in rows if r['equivalence']['mismatches'] == 0}
    thresholds = THRESHOLDS[args.dataset]
    chosen = equivalent if args.all else selected(rows, args.margin, thresholds)
    if args.only is not None:
        chosen = set(args.only) & equivalent
    for row in rows:
        measured = (synth_dir(args.dataset, row) / 'synth.json').is_file()
        if measured or (row['dump'] in chosen and not args.no_synth):
            row.update(synthesize(args.dataset, row, args.n_check))
    summary = table(rows, thresholds)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result = {
        'dataset': args.dataset,
        'thresholds': list(thresholds),
        'summary': summary,
        'rows': rows,
        'seconds': round(time.perf_counter() - start, 1),
        'versions': {'hgq': hgq.__version__, 'keras': keras.__version__},
    }
    (RESULTS_DIR / f'{args.dataset}_lut.json').write_text(json.dumps(result, indent=1) + '\n')
    write_markdown(RESULTS_DIR / f'{args.dataset}_lut.md', args.dataset, summary, rows)
    print(f'wrote {RESULTS_DIR / f"{args.dataset}_lut.md"}')


if __name__ == '__main__':
    main()
