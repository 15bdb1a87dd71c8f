"""Fit ``hgq.cost`` (LUTs from EBOPs plus the terms EBOPs leaves out) against yosys on every synthesized model, and
compare with EBOPs alone and with da4ml's own estimate.

The models: those of ``synth_models.py`` (``results/synth_models.jsonl``) and the front models of
``synth_front.py`` (every tool's benchmark MLPs rebuilt from their dumps and synthesized, ``results/*_lut.json``;
QKeras's saturate and round ties to even, which only the ``sat_round_bits``/``sat_round_in_bits`` terms
price).

Non-negative least squares on relative errors, no intercept. Reported per model: the in-sample error of every
estimate, the leave-one-out error of ours (each model predicted by coefficients fitted on all the others) and the
leave-family-out error (each model predicted by coefficients fitted on the other families only: a CNN by
coefficients that never saw a CNN of its data set, a QKeras model by coefficients that never saw a QKeras model).
The terms are recomputed from the saved models and dumps with the current ``hgq.cost.cost_terms`` (the rows'
recorded terms may come from an older definition). Writes ``benchmarks/results/cost_fit.json`` and
``cost_fit.md``; the coefficients go into ``hgq.cost.LUT_COEFFICIENTS`` by hand.

Diagnosis (``--no-overlap`` skips it): every model is traced again and each two-operand adder of the logic is
split into the bit positions where both operands have bits (``overlap``: one LUT each on a carry chain) and those
where only one has (``span - overlap``: the low bits pass through as wires, the high bits ride the carry chain
through an inverter or nothing). LUTs per overlap bit are far steadier across models than LUTs per adder bit.

    python benchmarks/fit_cost.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
from bench_common import BENCH_DIR, RESULTS_DIR, load_dump
from da4ml.types import minimal_kif
from scipy.optimize import nnls
from synth_front import LUT_DIR, build_model

import hgq  # noqa: F401  (registers the H-layers)
from hgq.cost import COST_TERMS, cost_terms
from hgq.rtl.trace import trace_model


def adder_bits_split(model: keras.Model) -> dict[str, int]:
    """Bit positions of the traced logic's two-operand adders: where both operands have bits, and in all."""
    ops = trace_model(model).comb.ops

    def bit_range(op_index: int, shift: int = 0) -> tuple[int, int] | None:
        k, i, f = minimal_kif(ops[op_index].qint)
        return None if k + i + f <= 0 else (-f + shift, int(k) + i + shift)

    overlap = span = 0
    for op in ops:
        if op.opcode not in (0, 1):  # addition, subtraction (data: the shift of the second operand)
            continue
        a, b = bit_range(op.id0), bit_range(op.id1, op.data)
        if a is None or b is None:
            continue
        overlap += max(0, min(a[1], b[1]) - max(a[0], b[0]))
        span += max(a[1], b[1]) - min(a[0], b[0])
    return {'overlap_bits': overlap, 'span_bits': span}


def front_rows() -> list[dict]:
    """The synthesized, equivalent front models of ``synth_front.py`` (every ``results/*_lut.json``)."""
    rows = []
    for path in sorted(RESULTS_DIR.glob('*_lut.json')):
        result = json.loads(path.read_text())
        for r in result['rows']:
            if r.get('lut') and r.get('mismatches') == 0 and r['equivalence']['mismatches'] == 0:
                dump = LUT_DIR / 'dumps' / result['dataset'] / r['dump']
                family = f'front {result["dataset"]} {r["tool"].split()[0]}'
                rows.append({**r, 'family': family, 'dump_path': str(dump), 'estimate_lut': r['da4ml_estimate_lut']})
    return rows


def load(row: dict) -> keras.Model:
    """The model of a row: a saved ``.keras`` file (``synth_models.py``) or a rebuilt dump (``synth_front.py``)."""
    if 'dump_path' in row:
        return build_model(load_dump(Path(row['dump_path'])))
    return keras.models.load_model(BENCH_DIR / row['model'], compile=False)


def config(row: dict) -> str:
    if row.get('config'):
        return row['config']
    return '-' if row.get('beta') is None else f'beta={row["beta"]:g}'


def label(row: dict) -> str:
    return f'{row["family"]} {config(row)} s{row["seed"]}'


def fit(features: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising the sum of squared relative errors (no intercept)."""
    coef, _ = nnls(features / lut[:, None], np.ones_like(lut))
    return coef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--no-overlap', action='store_true', help='skip the adder-overlap diagnosis (traces all)')
    args = parser.parse_args()
    rows = [json.loads(line) for line in (RESULTS_DIR / 'synth_models.jsonl').read_text().splitlines() if line]
    rows = [r for r in rows if r['lut']] + front_rows()
    for r in rows:
        model = load(r)
        r['terms'] = cost_terms(model)
        if not args.no_overlap:
            r.update(adder_bits_split(model))
    lut = np.array([r['lut'] for r in rows], dtype=np.float64)
    x = np.array([[r['terms'][t] for t in COST_TERMS] for r in rows])
    coef = fit(x, lut)
    ours = x @ coef
    ebops_coef = fit(x[:, :1], lut)
    ebops_only = x[:, 0] * ebops_coef[0]
    loo = np.array([x[i] @ fit(np.delete(x, i, 0), np.delete(lut, i)) for i in range(len(rows))])
    family = np.array([r['family'] for r in rows])
    lfo = np.array([x[i] @ fit(x[family != family[i]], lut[family != family[i]]) for i in range(len(rows))])
    da4ml = np.array([r['estimate_lut'] for r in rows])

    def err(estimate: np.ndarray) -> np.ndarray:
        return estimate / lut - 1

    summary = {
        'n_models': len(rows),
        'families': {f: int(np.sum(family == f)) for f in sorted(set(family))},
        'coefficients': dict(zip(COST_TERMS, coef.round(4).tolist(), strict=True)),
        'ebops_only_coefficient': round(float(ebops_coef[0]), 4),
        'max_abs_error': {
            'ours': float(np.max(np.abs(err(ours)))),
            'ours_leave_one_out': float(np.max(np.abs(err(loo)))),
            'ours_leave_family_out': float(np.max(np.abs(err(lfo)))),
            'ebops_only': float(np.max(np.abs(err(ebops_only)))),
            'da4ml_estimate': float(np.max(np.abs(err(da4ml)))),
        },
        'outside_10_percent': {
            name: [label(rows[i]) for i in np.flatnonzero(np.abs(err(v)) > 0.1)]
            for name, v in (('ours', ours), ('ours_leave_one_out', loo))
        },
    }
    summary['error_range'] = {
        name: [round(float(np.min(err(v))), 4), round(float(np.max(err(v))), 4)]
        for name, v in (('ours', ours), ('ours_leave_one_out', loo), ('ours_leave_family_out', lfo))
    }
    for r, o, lo, lf, e in zip(rows, ours, loo, lfo, ebops_only, strict=True):
        r.update(estimate_ours=float(o), estimate_ours_loo=float(lo), estimate_ours_lfo=float(lf))
        r.update(estimate_ebops_only=float(e))
    if not args.no_overlap:
        per_overlap = [r['lut'] / r['overlap_bits'] for r in rows]
        per_span = [r['lut'] / r['span_bits'] for r in rows]
        summary['lut_per_adder_bit'] = {
            'overlap': [round(min(per_overlap), 3), round(max(per_overlap), 3)],
            'span': [round(min(per_span), 3), round(max(per_span), 3)],
        }
    models = {'summary': summary, 'models': rows}
    (RESULTS_DIR / 'cost_fit.json').write_text(json.dumps(models, indent=1, default=str) + '\n')

    lines = [
        '| family | config | seed | test acc | EBOPs | sat/round bits (port) | yosys LUT | ours (err) | '
        'leave-one-out | leave-family-out | c x EBOPs (err) | da4ml estimate (err) |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]['family'], rows[i]['lut']))
    for i in order:
        r = rows[i]
        lines.append(
            f'| {r["family"]} | {config(r)} | {r["seed"]} | {r["test_accuracy"]:.4f} | {r["ebops"]:,.0f} | '
            f'{r["terms"]["sat_round_bits"]:,.0f} ({r["terms"]["sat_round_in_bits"]:,.0f}) | {r["lut"]:,} | '
            f'{ours[i]:,.0f} ({err(ours)[i]:+.1%}) | '
            f'{err(loo)[i]:+.1%} | {err(lfo)[i]:+.1%} | {ebops_only[i]:,.0f} ({err(ebops_only)[i]:+.1%}) | '
            f'{da4ml[i]:,.0f} ({err(da4ml)[i]:+.1%}) |'
        )
    if not args.no_overlap:
        lines += ['', 'Adders of the traced logic: bit positions where both operands have bits (overlap) and in all.']
        lines += ['']
        lines += ['| family | config | yosys LUT | overlap bits | LUT / overlap bit | span bits | LUT / span bit |']
        lines += ['|---|---|---|---|---|---|---|']
        for r in sorted(rows, key=lambda r: (r['family'], r['lut'])):
            lines.append(
                f'| {r["family"]} | {config(r)} | {r["lut"]:,} | {r["overlap_bits"]:,} | '
                f'{r["lut"] / r["overlap_bits"]:.3f} | {r["span_bits"]:,} | {r["lut"] / r["span_bits"]:.3f} |'
            )
    (RESULTS_DIR / 'cost_fit.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
