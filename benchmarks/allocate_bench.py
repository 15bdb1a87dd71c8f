"""Bit allocation without training (``hgq.allocate``): HAWQ-V3, OMPQ and cluster dynamic fixed point on the
benchmark MLPs, next to the trained tools of ``compare.py``.

For every seed the float32 reference MLP of ``train_hgq.py`` is trained (same settings, same seeding; cached in
``work/float_models/``), then every method allocates bits to it at every budget; each result is calibrated on the
training set, tested, and its EBOPs counted with the common counter of ``bench_common.py``.

Allocation time is that of ``hgq.allocate.allocate`` up to the calibrated allocation (building the H-model, range
observation over the whole training set, sensitivities, the integer programs and attempts, the final
``hgq.calibrate``), without the optional fine-tuning, which is timed apart. The machine has 2 CPU cores shared with
other jobs, so wall times are inflated by the load; every run records process CPU seconds and the load average, and
CPU seconds / min(2, threads) is what 2 idle cores would need if every second of it ran in parallel (the CPU seconds
themselves bound the wall time of 2 idle cores from above: tracing and the integer program run on one core).

    python benchmarks/allocate_bench.py --dataset digits --seeds 0 1 2
    python benchmarks/allocate_bench.py --dataset fashion_mnist --seeds 0

Writes ``results/allocate_<dataset>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import keras
import numpy as np
from bench_common import RESULTS_DIR, WORK_DIR, dense_ebops, seed_everything, sweep_parser, sweep_settings
from train_hgq import accuracy, build_float, fit

import hgq
from hgq.allocate import InfeasibleBudgetError, allocate
from hgq.layers import HDense, HQuantize

BUDGETS = {
    'digits': (1500, 2000, 3000, 4500, 7000, 11000, 20000),
    'fashion_mnist': (15000, 30000, 45000, 80000, 170000, 400000),
}
# (label, allocate arguments); the cluster method also runs without a budget (its plain 4-bit / ternary setups)
METHODS = {
    'hawq_v3': {'method': 'hawq_v3'},
    'hawq_v3 (channel)': {'method': 'hawq_v3', 'granularity': 'channel'},
    'ompq': {'method': 'ompq'},
    'cluster': {'method': 'cluster'},
}
# threads TensorFlow computes with (its default: one per core)
THREADS = os.cpu_count() or 1
# budget of the models converted to HLS and checked in C simulation with --csim (first seed)
CSIM_BUDGET = {'digits': 4500, 'fashion_mnist': 80000}
UNBUDGETED = {
    'cluster 4-bit (no budget)': {'method': 'cluster'},
    'cluster ternary (no budget)': {'method': 'cluster', 'bits': (2,)},
    'cluster ternary + 5 epochs fine-tuning': {'method': 'cluster', 'bits': (2,), 'finetune_epochs': 5},
}


def float_model(dataset: str, seed: int, data: dict, settings: dict) -> keras.Model:
    """The float32 reference of ``train_hgq.py`` for this seed (trained once, then loaded)."""
    path = WORK_DIR / 'float_models' / f'{dataset}_seed{seed}.keras'
    if path.is_file():
        return keras.models.load_model(path)
    seed_everything(seed)
    model = build_float(data['x_train'].shape[1], settings['hidden'], int(data['y_train'].max()) + 1)
    fit(model, data, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def common_ebops(model: keras.Model) -> float:
    dense = [layer for layer in model.layers if isinstance(layer, HDense)]
    return float(
        sum(dense_ebops(layer.input_bits_exact(), keras.ops.convert_to_numpy(layer.qkernel)) for layer in dense)
    )


def overflow_inputs(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Test inputs plus inputs beyond the calibrated ranges: doubled, negated, and uniform in ``+-3 * max|x|``."""
    rng = np.random.default_rng(seed)
    wide = rng.uniform(-3, 3, size=x.shape).astype(x.dtype) * np.max(np.abs(x))
    return np.concatenate([x, 2 * x, -x, wide])


def beyond_input_range(h_model, x: np.ndarray) -> int:
    """Samples with an input outside the calibrated range of the model's input quantizer (they wrap around)."""
    quantizer = next(layer for layer in h_model.layers if isinstance(layer, HQuantize)).input_quantizer
    k, i, f = quantizer.kif()
    low, high = -k * 2.0**i, 2.0**i - 2.0**-f
    return int(np.sum(np.any((x < low - 2.0 ** -(f + 1)) | (x > high + 2.0 ** -(f + 1)), axis=1)))


def csim_check(h_model, data, out_dir: Path) -> dict:
    """Convert to HLS (Vitis, io_parallel), compile the C simulation and compare it with Keras with
    ``np.array_equal`` on the test set and on inputs beyond the calibrated ranges (:func:`overflow_inputs`: values
    wrap in the input quantizer and overflow inside the model)."""
    from hgq.conversion import check_bit_exact

    start = time.perf_counter()
    hls_model = hgq.to_hls(h_model, out_dir, overwrite=True, backend='Vitis', io_type='io_parallel')
    hls_model.compile()
    x = overflow_inputs(data['x_test'])
    result, (hls_out,) = check_bit_exact(h_model, hls_model, x)
    keras_out = np.asarray(h_model.predict(x, batch_size=4096, verbose=0), dtype=np.float64)
    equal = bool(np.array_equal(keras_out, hls_out))
    beyond = beyond_input_range(h_model, x)
    print(
        f'  {result.describe()}; np.array_equal: {equal}; {beyond} of {len(x)} samples beyond the calibrated '
        f'input range ({time.perf_counter() - start:.0f} s)'
    )
    return {
        'csim_samples': result.n_samples,
        'csim_mismatched_samples': result.mismatched_samples,
        'csim_array_equal': equal,
        'csim_samples_beyond_input_range': beyond,
    }


def run_one(model, data, label, kwargs, budget, seed, csim_dir: Path | None = None) -> dict:
    row = {'series': label, 'budget': budget, 'seed': seed, **{k: v for k, v in kwargs.items() if k != 'bits'}}
    load = os.getloadavg()[0]
    try:
        h_model, report = allocate(
            model,
            data['x_train'],
            data['y_train'],
            budget_ebops=budget,
            verbose=0,
            return_report=True,
            seed=seed,
            **kwargs,
        )
    except InfeasibleBudgetError as err:
        row.update(infeasible=True, minimum=err.minimum)
        print(f'{label} budget={budget} seed={seed}: infeasible (minimum {err.minimum:.0f})')
        return row
    row.update(
        infeasible=False,
        allocate_seconds=report['allocate_time_s'],
        allocate_cpu_seconds=report['allocate_cpu_s'],
        finetune_seconds=report['finetune_time_s'],
        finetune_cpu_seconds=report['finetune_cpu_s'],
        load_average=max(load, os.getloadavg()[0]),
        threads=THREADS,
        attempts=report['attempts'],
        own_ebops=hgq.ebops(h_model),
        ebops=common_ebops(h_model),
        test_accuracy=accuracy(h_model, data),
        layers=report['layers'],
    )
    print(
        f'{label} budget={budget} seed={seed}: acc {row["test_accuracy"]:.4f}, EBOPs {row["ebops"]:.0f}, '
        f'allocation {row["allocate_seconds"]:.1f} s wall, {row["allocate_cpu_seconds"]:.1f} s CPU, '
        f'load {row["load_average"]:.1f}'
    )
    if csim_dir is not None:
        row.update(csim_check(h_model, data, csim_dir))
    return row


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if not r['infeasible']:
            groups.setdefault((r['series'], r['budget']), []).append(r)
    out = []
    for (series, budget), rows in groups.items():
        acc = np.array([r['test_accuracy'] for r in rows])
        ebops = np.array([r['ebops'] for r in rows])
        secs = np.array([r['allocate_seconds'] for r in rows])
        cpu = [r.get('allocate_cpu_seconds') for r in rows]
        cpu = np.array(cpu, dtype=float) if all(c is not None for c in cpu) else None
        loads = [r['load_average'] for r in rows if 'load_average' in r]
        threads = min(2, max(r.get('threads', 2) for r in rows))
        out.append(
            {
                'series': series,
                'budget': budget,
                'seeds': [r['seed'] for r in rows],
                'accuracy_mean': float(acc.mean()),
                'accuracy_std': float(acc.std()),
                'ebops_mean': float(ebops.mean()),
                'ebops_max': float(ebops.max()),
                'allocate_seconds_mean': float(secs.mean()),
                'allocate_seconds_max': float(secs.max()),
                'allocate_cpu_seconds_mean': None if cpu is None else float(cpu.mean()),
                'allocate_cpu_seconds_max': None if cpu is None else float(cpu.max()),
                'allocate_cpu_per_core_max': None if cpu is None else float(cpu.max() / threads),
                'finetune_seconds_mean': float(np.mean([r.get('finetune_seconds', 0.0) for r in rows])),
                'load_average': [min(loads), max(loads)] if loads else None,
                'within_budget': bool(budget is None or ebops.max() <= budget),
            }
        )
    return sorted(out, key=lambda s: (s['series'], s['ebops_mean']))


def write_markdown(path: Path, dataset: str, settings: list[dict], runs: list[dict], float_acc: list[float]) -> None:
    lines = [
        f'# Bit allocation without training: {dataset}',
        '',
        f'Machine: {platform.machine()} Linux, 2 CPU cores shared with other jobs (wall times inflated by the load '
        'average shown). Allocation: `allocate` up to the calibrated result, fine-tuning excluded (own column). '
        'CPU: process CPU seconds; CPU / 2: what 2 idle cores need if it all ran in parallel (the CPU seconds bound '
        'their wall time from above). Float32 reference accuracy: '
        f'{np.mean(float_acc):.4f} ± {np.std(float_acc):.4f} ({len(float_acc)} seeds).',
        '',
        '| method | budget | seeds | accuracy | EBOPs (common) | max EBOPs | allocation wall s (mean / max) | '
        'CPU s (mean / max) | max CPU / 2 | load | fine-tuning wall s |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for s in settings:
        budget = '-' if s['budget'] is None else f'{s["budget"]:.0f}'
        cpu = cpu_half = '-'
        if s.get('allocate_cpu_seconds_mean') is not None:
            cpu = f'{s["allocate_cpu_seconds_mean"]:.1f} / {s.get("allocate_cpu_seconds_max", float("nan")):.1f}'
        if s.get('allocate_cpu_per_core_max') is not None:
            cpu_half = f'{s["allocate_cpu_per_core_max"]:.1f}'
        load = '-' if not s.get('load_average') else f'{s["load_average"][0]:.0f}-{s["load_average"][1]:.0f}'
        tune = f'{s["finetune_seconds_mean"]:.0f}' if s.get('finetune_seconds_mean') else '-'
        lines.append(
            f'| {s["series"]} | {budget} | {len(s["seeds"])} | {s["accuracy_mean"]:.4f} ± {s["accuracy_std"]:.4f} | '
            f'{s["ebops_mean"]:.0f} | {s["ebops_max"]:.0f} | {s["allocate_seconds_mean"]:.1f} / '
            f'{s["allocate_seconds_max"]:.1f} | {cpu} | {cpu_half} | {load} | {tune} |'
        )
    infeasible: dict[str, list[dict]] = {}
    for r in runs:
        if r['infeasible']:
            infeasible.setdefault(r['series'], []).append(r)
    if infeasible:
        lines += ['', 'Budgets refused as infeasible (`InfeasibleBudgetError` names the minimum feasible EBOPs):']
        for series, rows in infeasible.items():
            budgets = sorted({f'{r["budget"]:.0f}' for r in rows}, key=float)
            low, high = min(r['minimum'] for r in rows), max(r['minimum'] for r in rows)
            minimum = f'{low:.0f}' if low == high else f'{low:.0f} to {high:.0f} (by seed)'
            lines.append(f'- {series}: budgets {", ".join(budgets)}; minimum {minimum} EBOPs')
    checked = [r for r in runs if 'csim_samples' in r]
    if checked:
        lines += [
            '',
            'C simulation (hls4ml, Vitis, io_parallel) against Keras, value for value, on the test set and inputs '
            'beyond the calibrated ranges:',
        ]
        lines += [
            f'- {r["series"]} (budget {r["budget"]}, seed {r["seed"]}): {r["csim_mismatched_samples"]} of '
            f'{r["csim_samples"]} samples differ'
            + (
                f' (test set, doubled, negated, uniform in +-3 max|x|; np.array_equal: {r["csim_array_equal"]}; '
                f'{r["csim_samples_beyond_input_range"]} samples beyond the calibrated input range)'
                if 'csim_array_equal' in r
                else ' (test set and the test set doubled)'
            )
            for r in checked
        ]
    path.write_text('\n'.join(lines) + '\n')


def plot(path: Path, dataset: str, settings: list[dict], peers: Path | None = None) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    peers = peers or RESULTS_DIR / f'{dataset}.json'
    if peers.is_file():
        for series, marker in (('hgq (ours)', 'o'), ('HGQ2 0.2.0', 's'), ('QKeras 0.9.0', '^')):
            points = [s for s in json.loads(peers.read_text())['settings'] if s['tool'] == series]
            if points:
                ax.scatter(
                    [p['ebops_mean'] for p in points],
                    [p['accuracy_mean'] for p in points],
                    marker=marker,
                    label=f'{series} (trained)',
                    alpha=0.6,
                )
    for series in sorted({s['series'] for s in settings}):
        points = sorted((s for s in settings if s['series'] == series), key=lambda s: s['ebops_mean'])
        ax.errorbar(
            [p['ebops_mean'] for p in points],
            [p['accuracy_mean'] for p in points],
            yerr=[p['accuracy_std'] for p in points],
            marker='x',
            linestyle='--',
            capsize=2,
            label=series,
        )
    ax.set_xscale('log')
    ax.set_xlabel('EBOPs (common counter)')
    ax.set_ylabel('test accuracy')
    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
    ax.set_title(f'{dataset}: bit allocation without training vs trained tools')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--budgets', type=float, nargs='+', help='EBOPs budgets (default: per data set)')
    parser.add_argument('--methods', nargs='+', default=[*METHODS, *UNBUDGETED], help='series to run')
    parser.add_argument('--csim', action='store_true', help='C-simulation check of one model per series')
    parser.add_argument('--name', help='results file stem (default allocate_<dataset>)')
    parser.add_argument('--render', action='store_true', help='only rewrite the .md and .png from the .json')
    parser.add_argument(
        '--peers', type=Path, help='results of compare.py to plot with (default results/<dataset>.json)'
    )
    args = parser.parse_args()
    stem = RESULTS_DIR / (args.name or f'allocate_{args.dataset}')
    if args.render:
        record = json.loads(stem.with_suffix('.json').read_text())
        record['summary'] = summarize(record['runs'])
        stem.with_suffix('.json').write_text(json.dumps(record, indent=1, default=float))
        write_markdown(
            stem.with_suffix('.md'), args.dataset, record['summary'], record['runs'], record['float_accuracy']
        )
        plot(stem.with_suffix('.png'), args.dataset, record['summary'], args.peers)
        return
    settings, data = sweep_settings(args)
    budgets = args.budgets or BUDGETS[args.dataset]
    runs, float_acc = [], []
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every run: an interrupted sweep keeps what it measured
        record = {
            'dataset': args.dataset,
            'settings': settings,
            'machine': f'{platform.machine()} Linux, 2 shared CPU cores',
            'versions': {'hgq': hgq.__version__, 'keras': keras.__version__},
            'float_accuracy': float_acc,
            'summary': summarize(runs),
            'runs': runs,
        }
        stem.with_suffix('.json').write_text(json.dumps(record, indent=1, default=float))

    for seed in args.seeds:
        model = float_model(args.dataset, seed, data, settings)
        float_acc.append(accuracy(model, data))
        print(f'float seed={seed}: acc {float_acc[-1]:.4f}')
        for label in args.methods:
            csim = args.csim and seed == args.seeds[0]
            csim_dir = WORK_DIR / 'csim' / args.dataset / re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')
            if label in UNBUDGETED:
                runs.append(run_one(model, data, label, UNBUDGETED[label], None, seed, csim_dir if csim else None))
                save()
                continue
            for budget in budgets:
                check = csim and budget == CSIM_BUDGET[args.dataset]
                runs.append(
                    run_one(model, data, label, METHODS[label], float(budget), seed, csim_dir if check else None)
                )
                save()
    summary = summarize(runs)
    write_markdown(stem.with_suffix('.md'), args.dataset, summary, runs, float_acc)
    plot(stem.with_suffix('.png'), args.dataset, summary, args.peers)
    print(f'wrote {stem}.json, .md, .png')


if __name__ == '__main__':
    main()
