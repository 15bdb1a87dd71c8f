"""Compute EBOPs of every dumped model with one common definition and write the comparison.

Run in the hgq virtual environment after the training scripts::

    python benchmarks/compare.py --dataset digits
    python benchmarks/compare.py --dataset fashion_mnist_cnn   # the CNN of configs/fashion_mnist_cnn.yaml

Writes ``benchmarks/results/<dataset>.json`` (every run and the per-setting aggregates), ``<dataset>.md`` (tables)
and ``<dataset>.png`` (test accuracy against EBOPs, log scale).

``--reuse-peers`` takes the peers' runs from the existing ``results/<dataset>.json`` (for when only this project's
models were retrained and the peers' scripts did not change); the output says so. Peer dumps present (e.g. settings
added to a peer's sweep) are counted too and replace a reused run of the same tool, setting and seed.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import RESULTS_DIR, WORK_DIR, load_dump, model_ebops

TOOL_ORDER = ('hgq (ours)', 'HGQ2 0.2.0', 'QKeras 0.9.0')
OURS = TOOL_ORDER[0]
PEERS = TOOL_ORDER[1:]
# Column of the threshold table for our beta ramps with a Pareto front of checkpoints.
RAMPS = 'hgq (ours), beta ramps + ParetoFront'

# Accuracy levels of the "fewest EBOPs reaching an accuracy" table, per data set.
THRESHOLDS = {
    'digits': (0.90, 0.93, 0.95, 0.96, 0.97),
    'digits_cosine': (0.90, 0.93, 0.95, 0.96, 0.97),
    'fashion_mnist': (0.80, 0.83, 0.85, 0.86, 0.87),
    # the float32 CNN reaches 0.877 in 10 epochs (seed 0): from 4.7 points under it to 0.2 points under it
    'fashion_mnist_cnn': (0.83, 0.85, 0.86, 0.87, 0.875),
}
STYLES = {'hgq (ours)': ('tab:red', 'o'), 'HGQ2 0.2.0': ('tab:blue', 's'), 'QKeras 0.9.0': ('tab:green', '^')}
RAMP_STYLE = ('darkred', 'x')


def collect(dataset: str, reuse_peers: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-run records of the quantized models and of the float reference."""
    paths = sorted((WORK_DIR / 'dumps' / dataset).glob('*.npz'))
    if not paths:
        raise FileNotFoundError(f'no dumps under {WORK_DIR / "dumps" / dataset}; run the training scripts first')
    runs, floats = [], []
    for path in paths:
        dump = load_dump(path)
        meta = dump['meta']
        if meta.get('float'):
            floats.append(meta)
            continue
        layers = model_ebops(dump)
        runs.append(
            {
                **meta,
                'series': series_name(meta),
                'file': path.name,
                'ebops': float(sum(layers)),
                'layer_ebops': layers,
                'input_bits_mean': [float(np.mean(b)) for b in dump['input_bits']],
                'zero_weights': [float(np.mean(k == 0)) for k in dump['kernels']],
            }
        )
    if reuse_peers:
        fresh = {run_key(r) for r in runs}
        runs += [r for r in previous_peer_runs(dataset) if run_key(r) not in fresh]
    return runs, floats


def run_key(run: dict[str, Any]) -> tuple[str, str, int]:
    return run['tool'], run['config'], int(run['seed'])


def previous_peer_runs(dataset: str) -> list[dict[str, Any]]:
    """The peers' per-run records of the existing ``results/<dataset>.json`` (marked ``reused``)."""
    path = RESULTS_DIR / f'{dataset}.json'
    if not path.is_file():
        raise FileNotFoundError(f'--reuse-peers: {path} is missing; run the peers first')
    runs = [r for r in json.loads(path.read_text())['runs'] if r['tool'] in PEERS]
    if not runs:
        raise ValueError(f'--reuse-peers: {path} holds no peer runs')
    return [{**r, 'reused': True} for r in runs]


def series_name(meta: dict[str, Any]) -> str:
    """One curve per tool; QKeras has one per activation format (integer bits of the hidden activation)."""
    return meta['tool'] if 'act_int' not in meta else f'{meta["tool"]}, i_act={meta["act_int"]}'


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every (tool, setting)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if 'ramp' not in run:
            groups[run['tool'], run['config']].append(run)
    rows = []
    for (tool, config), members in groups.items():
        acc = np.array([m['test_accuracy'] for m in members])
        ebops = np.array([m['ebops'] for m in members])
        layers = np.mean([m['layer_ebops'] for m in members], axis=0)
        rows.append(
            {
                'tool': tool,
                'series': members[0]['series'],
                'config': config,
                'seeds': sorted(m['seed'] for m in members),
                'accuracy_mean': float(acc.mean()),
                'accuracy_std': float(acc.std()),
                'ebops_mean': float(ebops.mean()),
                'ebops_std': float(ebops.std()),
                'layer_ebops_mean': [float(v) for v in layers],
                'zero_weights_mean': float(np.mean([np.mean(m['zero_weights']) for m in members])),
                'train_seconds_mean': float(np.mean([m['train_seconds'] for m in members])),
            }
        )
    mark_pareto(rows)
    return sorted(rows, key=lambda r: (TOOL_ORDER.index(r['tool']), r['ebops_mean']))


def mark_pareto(rows: list[dict[str, Any]]) -> None:
    """``pareto``: no other setting (of any tool) has both fewer-or-equal EBOPs and higher-or-equal accuracy."""
    for row in rows:
        row['pareto'] = not any(
            other is not row
            and other['ebops_mean'] <= row['ebops_mean']
            and other['accuracy_mean'] >= row['accuracy_mean']
            and (other['ebops_mean'], other['accuracy_mean']) != (row['ebops_mean'], row['accuracy_mean'])
            for other in rows
        )


def cheapest_at(rows: list[dict[str, Any]], runs: list[dict[str, Any]], thresholds: list[float]) -> list[dict]:
    """For each tool and accuracy threshold, the setting with the fewest mean EBOPs reaching it.

    Constant settings: mean accuracy over seeds >= threshold, fewest mean EBOPs. Beta ramps (column ``RAMPS``):
    in every seed's front the cheapest checkpoint whose test accuracy reaches the threshold, EBOPs averaged over
    seeds (only if every seed has one). ``ratio`` is our constant-beta cost over the best peer's.
    """
    table = []
    for threshold in thresholds:
        entry: dict[str, Any] = {'accuracy_at_least': threshold}
        for tool in TOOL_ORDER:
            ok = [r for r in rows if r['tool'] == tool and r['accuracy_mean'] >= threshold]
            best = min(ok, key=lambda r: r['ebops_mean']) if ok else None
            entry[tool] = None if best is None else {'config': best['config'], 'ebops': best['ebops_mean']}
        entry[RAMPS] = cheapest_ramp_at(runs, threshold)
        peers = [entry[t]['ebops'] for t in PEERS if entry[t] is not None]
        for key in (OURS, RAMPS):
            if entry[key] is not None and peers:
                entry[key]['ratio'] = entry[key]['ebops'] / min(peers)
        table.append(entry)
    return table


def cheapest_ramp_at(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """Best ramp for a threshold: per seed the cheapest front checkpoint reaching it, EBOPs averaged over seeds."""
    ramps: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if 'ramp' in run:
            ramps[run['config']][run['seed']].append(run)
    best = None
    for config, seeds in ramps.items():
        cheapest = [
            min((r['ebops'] for r in points if r['test_accuracy'] >= threshold), default=None)
            for points in seeds.values()
        ]
        if cheapest and None not in cheapest:
            value = float(np.mean(cheapest))
            if best is None or value < best['ebops']:
                best = {'config': config, 'ebops': value, 'seeds': len(cheapest)}
    return best


def per_seed_cheapest(runs: list[dict[str, Any]], cheapest: list[dict]) -> list[dict]:
    """For each threshold and each of our seeds, our cheapest model reaching it (constant beta or ramp checkpoint).

    ``ratio``: its EBOPs over the best peer's (mean over the peer's seeds, as in ``cheapest``); ``median_ratio``
    over our seeds (``None`` where a seed has no model reaching the threshold).
    """
    seeds = sorted({r['seed'] for r in runs if r['tool'] == OURS})
    table = []
    for entry in cheapest:
        threshold = entry['accuracy_at_least']
        peers = [entry[t]['ebops'] for t in PEERS if entry[t] is not None]
        best_peer = min(peers) if peers else None
        row: dict[str, Any] = {'accuracy_at_least': threshold, 'seeds': {}}
        for seed in seeds:
            ok = [r for r in runs if r['tool'] == OURS and r['seed'] == seed and r['test_accuracy'] >= threshold]
            best = min(ok, key=lambda r: r['ebops']) if ok else None
            row['seeds'][seed] = (
                None
                if best is None
                else {
                    'config': best['config'] + (f', epoch {best["epoch"]}' if 'ramp' in best else ''),
                    'ebops': best['ebops'],
                    'ratio': best['ebops'] / best_peer if best_peer else None,
                }
            )
        ratios = [c['ratio'] if c else np.inf for c in row['seeds'].values()]
        median = float(np.median(ratios)) if ratios and best_peer else None
        row['median_ratio'] = median if median is not None and np.isfinite(median) else None
        table.append(row)
    return table


def per_seed_lines(table: list[dict]) -> list[str]:
    if not table or not table[0]['seeds']:
        return []
    seeds = list(table[0]['seeds'])
    lines = [
        '',
        '## hgq (ours) per seed: fewest EBOPs reaching an accuracy',
        '',
        'Per seed, our cheapest model (constant beta, or a ramp checkpoint) whose test accuracy reaches the '
        "threshold; x: its cost over the best peer's (the peer's mean over its seeds, table above).",
        '',
        '| accuracy ≥ | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | median x |',
        '|---|' + '---|' * (len(seeds) + 1),
    ]
    for row in table:
        cells = [
            '—' if c is None else f'{c["ebops"]:.0f} ({c["config"]}' + (f', {c["ratio"]:.2f}x)' if c['ratio'] else ')')
            for c in row['seeds'].values()
        ]
        median = '—' if row['median_ratio'] is None else f'{row["median_ratio"]:.2f}x'
        lines.append(f'| {threshold_label(row["accuracy_at_least"])} | ' + ' | '.join(cells) + f' | {median} |')
    return lines


def own_ebops_abs_diff(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Largest absolute difference between the common EBOPs and each tool's own count, per tool."""
    out = {}
    for tool in TOOL_ORDER:
        diffs = [abs(r['own_ebops'] - r['ebops']) for r in runs if r['tool'] == tool and 'own_ebops' in r]
        if diffs:
            out[tool] = max(diffs)
    return out


def own_ebops_check(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Largest relative difference between the common EBOPs and each tool's own count, per tool."""
    out = {}
    for tool in TOOL_ORDER:
        pairs = [(r['ebops'], r['own_ebops']) for r in runs if r['tool'] == tool and 'own_ebops' in r]
        if pairs:
            out[tool] = max(abs(own - ours) / max(ours, 1.0) for ours, own in pairs)
    return out


def markdown(dataset: str, rows, floats, cheapest, check, runs=(), per_seed=()) -> str:
    float_acc = np.array([f['test_accuracy'] for f in floats]) if floats else None
    s = floats[0] if floats else {}
    cnn = s.get('model') == 'cnn'
    lines = [f'# {dataset}: test accuracy against EBOPs', '']
    if cnn:
        lines += [
            f'CNN of `configs/fashion_mnist_cnn.yaml` (conv {" -> conv ".join(str(f) for f in s["filters"])} '
            f'{s["kernel_size"]}x{s["kernel_size"]} relu, each followed by {s["pool_size"]}x{s["pool_size"]} max '
            f'pooling, dense {s["hidden"]} relu, dense 10), {s["epochs"]} epochs, batch {s["batch_size"]}, '
            f'Adam {s["learning_rate"]} with a cosine decay to {s["lr_final"]:g}x; mean ± std over training seeds '
            '(one data split); EBOPs from `benchmarks/bench_common.py` (bits of each input element × MSB-to-LSB '
            'span of each quantized weight, summed over every multiplication of the convolutions, at every output '
            'position, and of the dense layers).',
            '',
        ]
    else:
        lines += [
            f'MLP {s.get("hidden", "?")} hidden units, {s.get("epochs", "?")} epochs, '
            f'batch {s.get("batch_size", "?")}, '
            f'Adam {s.get("learning_rate", "?")}'
            + (f' with a cosine decay to {s["lr_final"]:g}x' if 'lr_final' in s else '')
            + '; mean ± std over training seeds (one data split); '
            'EBOPs from `benchmarks/bench_common.py` (bits of each input element × MSB-to-LSB span of each '
            'quantized weight, summed over the dense layers).',
            '',
        ]
    if float_acc is not None:
        reference = spread(float_acc.mean(), float_acc.std(), len(float_acc), '.4f')
        seeds = f'{len(float_acc)} seed' + ('s' if len(float_acc) > 1 else '')
        lines += [f'Float32 reference (same {"CNN" if cnn else "MLP"}): {reference} ({seeds}).', '']
    lines += [
        '| tool | setting | test accuracy | EBOPs | EBOPs per layer | zero weights | train s/run | Pareto |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        per_layer = ' / '.join(f'{v:.0f}' for v in r['layer_ebops_mean'])
        n = len(r['seeds'])
        lines.append(
            f'| {r["tool"]} | {r["config"]} | {spread(r["accuracy_mean"], r["accuracy_std"], n, ".4f")} '
            f'| {spread(r["ebops_mean"], r["ebops_std"], n, ".0f")} | {per_layer} | {r["zero_weights_mean"]:.1%} '
            f'| {r["train_seconds_mean"]:.1f} | {"yes" if r["pareto"] else ""} |'
        )
    lines += ramp_lines(runs)
    lines += ['', '## Fewest EBOPs reaching an accuracy (mean over seeds)', '']
    columns = (*TOOL_ORDER, RAMPS)
    if cnn:  # only the tools that were run
        columns = tuple(c for c in columns if any(e[c] is not None for e in cheapest) or c in TOOL_ORDER[:2])
    lines += ['| accuracy ≥ | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
    for entry in cheapest:
        cells = [cheapest_cell(entry[t]) for t in columns]
        lines.append(f'| {threshold_label(entry["accuracy_at_least"])} | ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        "x: cost over the best peer's at that accuracy. Ramps: per seed the cheapest Pareto-front checkpoint "
        '(chosen during training on training-set accuracy and EBOPs) whose test accuracy reaches the threshold, '
        'averaged over seeds; constant settings: the mean test accuracy over seeds must reach it.',
    ]
    lines += per_seed_lines(list(per_seed))
    reused = sorted({r['tool'] for r in runs if r.get('reused')})
    if reused:
        lines += ['', f'Runs of {", ".join(reused)} reused from the previous results (their scripts did not change).']
    if check:
        lines += [
            '',
            "Largest relative difference between the common EBOPs and the tool's own EBOPs count (HGQ2 counts its "
            'bitwidth parameters rather than the quantized values, and adds bias terms):',
        ]
        lines += [f'- {tool}: {diff:.2%}' for tool, diff in check.items()]
        if cnn:
            absolute = own_ebops_abs_diff(list(runs))
            lines += ['', 'Largest absolute difference, common minus own EBOPs:']
            lines += [f'- {tool}: {diff:g}' for tool, diff in absolute.items()]
    return '\n'.join(lines) + '\n'


def threshold_label(threshold: float) -> str:
    """Two decimals, three where needed: 0.90, 0.875."""
    return f'{threshold:.2f}' if round(threshold, 2) == threshold else f'{threshold:.3f}'


def cheapest_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return '—'
    ratio = f', {cell["ratio"]:.2f}x' if 'ratio' in cell else ''
    return f'{cell["ebops"]:.0f} ({cell["config"]}{ratio})'


def ramp_lines(runs) -> list[str]:
    """Every Pareto-front checkpoint of the beta ramps, by ramp and seed."""
    points = sorted((r for r in runs if 'ramp' in r), key=lambda r: (r['config'], r['seed'], r['ebops']))
    if not points:
        return []
    lines = [
        '',
        '## Beta ramps with ParetoFront (hgq): every checkpoint of each front',
        '',
        '| ramp | seed | epoch | beta | train accuracy | test accuracy | EBOPs | input width |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in points:
        lines.append(
            f'| {r["config"]} | {r["seed"]} | {r["epoch"]} | {r["beta"]:.2g} | {r["train_accuracy"]:.4f} '
            f'| {r["test_accuracy"]:.4f} | {r["ebops"]:.0f} | {r.get("input_width")} |'
        )
    return lines


def ebops_label(value: float, _position: Any = None) -> str:
    """Short tick label: 500, 2k, 50k, 1M."""
    for scale, suffix in ((1e6, 'M'), (1e3, 'k')):
        if value >= scale:
            return f'{value / scale:g}{suffix}'
    return f'{value:g}'


def spread(mean: float, std: float, n: int, fmt: str) -> str:
    """``mean ± std`` over seeds, or just the value for a single seed."""
    return format(mean, fmt) if n < 2 else f'{mean:{fmt}} ± {std:{fmt}}'


def plot(dataset: str, runs, rows, floats, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    series = sorted({r['series'] for r in rows}, key=lambda name: (TOOL_ORDER.index(name.split(',')[0]), name))
    for name in series:
        tool = name.split(',')[0]
        color, marker = STYLES[tool]
        dashed = name != tool and not name.endswith('i_act=0')
        mine = [r for r in runs if r['series'] == name and 'ramp' not in r]
        ax.scatter(
            [r['ebops'] for r in mine], [r['test_accuracy'] for r in mine], color=color, marker=marker, alpha=0.25, s=14
        )
        means = sorted((r for r in rows if r['series'] == name), key=lambda r: r['ebops_mean'])
        ax.errorbar(
            [r['ebops_mean'] for r in means],
            [r['accuracy_mean'] for r in means],
            yerr=[r['accuracy_std'] for r in means],
            color=color,
            marker=marker,
            ls='--' if dashed else '-',
            mfc='white' if dashed else color,
            label=name,
            capsize=2,
        )
    ramp = [r for r in runs if 'ramp' in r]
    if ramp:
        color, marker = RAMP_STYLE
        ax.scatter(
            [r['ebops'] for r in ramp],
            [r['test_accuracy'] for r in ramp],
            color=color,
            marker=marker,
            s=18,
            label=f'{RAMPS} (checkpoints)',
        )
    if floats:
        ax.axhline(np.mean([f['test_accuracy'] for f in floats]), color='grey', ls='--', label='float32')
    ax.set_xscale('log')
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(ebops_label))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('EBOPs (common definition)')
    ax.set_ylabel('test accuracy')
    ax.set_title(f'{dataset}: accuracy vs EBOPs (faint: single seeds, line: mean ± std)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', default='digits')
    parser.add_argument('--thresholds', type=float, nargs='+', default=None, help='default: THRESHOLDS[dataset]')
    parser.add_argument('--reuse-peers', action='store_true', help="peers' runs from the existing results JSON")
    args = parser.parse_args()
    runs, floats = collect(args.dataset, args.reuse_peers)
    rows = aggregate(runs)
    cheapest = cheapest_at(rows, runs, args.thresholds or list(THRESHOLDS.get(args.dataset, (0.9,))))
    check = own_ebops_check(runs)
    per_seed = per_seed_cheapest(runs, cheapest)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    result = {
        'dataset': args.dataset,
        'settings': rows,
        'cheapest': cheapest,
        'per_seed_cheapest': per_seed,
        'own_ebops_max_rel_diff': check,
        'float_reference': floats,
        'runs': runs,
    }
    (RESULTS_DIR / f'{args.dataset}.json').write_text(json.dumps(result, indent=1) + '\n')
    text = markdown(args.dataset, rows, floats, cheapest, check, runs, per_seed)
    (RESULTS_DIR / f'{args.dataset}.md').write_text(text)
    plot(args.dataset, runs, rows, floats, RESULTS_DIR / f'{args.dataset}.png')
    print(text)


if __name__ == '__main__':
    main()
