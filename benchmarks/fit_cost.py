"""Fit ``hgq.cost`` (LUTs from EBOPs plus the terms EBOPs leaves out) against yosys on the models of
``synth_models.py``, and compare with EBOPs alone and with da4ml's own estimate.

Non-negative least squares on relative errors, no intercept. Reported per model: the in-sample error of every
estimate, the leave-one-out error of ours (each model predicted by coefficients fitted on all the others) and the
leave-family-out error (each model predicted by coefficients fitted on the other families only: a CNN by
coefficients that never saw a CNN of its data set). The terms are recomputed from the saved models with the
current ``hgq.cost.cost_terms`` (the rows' recorded terms may come from an older definition).
Writes ``benchmarks/results/cost_fit.json`` and ``cost_fit.md``; the coefficients go into
``hgq.cost.LUT_COEFFICIENTS`` by hand.

    python benchmarks/fit_cost.py
"""

from __future__ import annotations

import json

import keras
import numpy as np
from bench_common import BENCH_DIR, RESULTS_DIR
from scipy.optimize import nnls

import hgq  # noqa: F401  (registers the H-layers)
from hgq.cost import COST_TERMS, cost_terms


def fit(features: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Coefficients >= 0 minimising the sum of squared relative errors (no intercept)."""
    coef, _ = nnls(features / lut[:, None], np.ones_like(lut))
    return coef


def main() -> None:
    rows = [json.loads(line) for line in (RESULTS_DIR / 'synth_models.jsonl').read_text().splitlines() if line]
    rows = [r for r in rows if r['lut']]
    for r in rows:
        model = keras.models.load_model(BENCH_DIR / r['model'], compile=False)
        r['terms'] = cost_terms(model)
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
        'coefficients': dict(zip(COST_TERMS, coef.round(4).tolist(), strict=True)),
        'ebops_only_coefficient': round(float(ebops_coef[0]), 4),
        'max_abs_error': {
            'ours': float(np.max(np.abs(err(ours)))),
            'ours_leave_one_out': float(np.max(np.abs(err(loo)))),
            'ours_leave_family_out': float(np.max(np.abs(err(lfo)))),
            'ebops_only': float(np.max(np.abs(err(ebops_only)))),
            'da4ml_estimate': float(np.max(np.abs(err(da4ml)))),
        },
    }
    summary['error_range'] = {
        name: [round(float(np.min(err(v))), 4), round(float(np.max(err(v))), 4)]
        for name, v in (('ours', ours), ('ours_leave_one_out', loo), ('ours_leave_family_out', lfo))
    }
    for r, o, lo, lf, e in zip(rows, ours, loo, lfo, ebops_only, strict=True):
        r.update(estimate_ours=float(o), estimate_ours_loo=float(lo), estimate_ours_lfo=float(lf))
        r.update(estimate_ebops_only=float(e))
    (RESULTS_DIR / 'cost_fit.json').write_text(json.dumps({'summary': summary, 'models': rows}, indent=1) + '\n')

    lines = [
        '| family | beta | seed | test acc | EBOPs | yosys LUT | ours (err) | leave-one-out | leave-family-out | '
        'c x EBOPs (err) | da4ml estimate (err) |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    order = sorted(range(len(rows)), key=lambda i: (rows[i]['family'], rows[i]['lut']))
    for i in order:
        r = rows[i]
        beta = '-' if r['beta'] is None else format(r['beta'], 'g')
        lines.append(
            f'| {r["family"]} | {beta} | {r["seed"]} | {r["test_accuracy"]:.4f} | {r["ebops"]:,.0f} | '
            f'{r["lut"]:,} | {ours[i]:,.0f} ({err(ours)[i]:+.1%}) | {err(loo)[i]:+.1%} | {err(lfo)[i]:+.1%} | '
            f'{ebops_only[i]:,.0f} ({err(ebops_only)[i]:+.1%}) | {da4ml[i]:,.0f} ({err(da4ml)[i]:+.1%}) |'
        )
    (RESULTS_DIR / 'cost_fit.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
