"""Bit-exact checks of :mod:`hgq.fixed_point` against the real ``ap_fixed`` headers shipped with hls4ml.

The slow tests compile one small C++ program (``tests/oracle/ap_cast.cpp``) with one ``ap_fixed``/``ap_ufixed``
instantiation per (format, rounding mode, overflow mode), feed it float64 values and compare ``.to_double()``
with :func:`hgq.fixed_point.quantize` using ``np.array_equal``. The remaining tests need numpy/keras only.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import hls4ml
import keras
import numpy as np
import pytest

from hgq.fixed_point import (
    OVERFLOW_MODES,
    ROUND_MODES,
    fixed_type_string,
    minimal_kif,
    quantize,
    quantize_tensor,
)

ORACLE_SRC = Path(__file__).parent / 'oracle' / 'ap_cast.cpp'
AP_TYPES = Path(hls4ml.__file__).parent / 'templates' / 'vivado' / 'ap_types'
MODES = list(itertools.product(ROUND_MODES, OVERFLOW_MODES))

# (k, i, f): sign bit, integer bits excluding sign, fractional bits. ap type: <k+i+f, k+i>.
FORMATS = [
    (1, 3, 4),  # ap_fixed<8,4>
    (0, 4, 4),  # ap_ufixed<8,4>
    (1, 7, -4),  # ap_fixed<4,8>: negative f
    (0, 6, -3),  # ap_ufixed<3,6>: negative f
    (1, -3, 6),  # ap_fixed<4,-2>: negative i
    (0, -2, 6),  # ap_ufixed<4,-2>: negative i
    (1, 0, 0),  # ap_fixed<1,1>: width 1
    (0, 0, 1),  # ap_ufixed<1,0>: width 1
    (1, -4, 4),  # ap_fixed<1,-3>: width 1, negative i
    (1, 9, 14),  # ap_fixed<24,10>: wide
    (0, 12, 12),  # ap_ufixed<24,12>: wide
]


def ap_type(k: int, i: int, f: int, round_mode: str, overflow_mode: str) -> str:
    """C++ type of format ``(k, i, f)`` with explicit modes, written independently of ``fixed_type_string``."""
    name = 'ap_fixed' if k else 'ap_ufixed'
    return f'{name}<{k + i + f}, {k + i}, AP_{round_mode}, AP_{overflow_mode}>'


@dataclass
class Oracle:
    """The compiled ap_fixed oracle: ``run(format_index, x)`` returns one result row per mode in :data:`MODES`."""

    binary: Path
    compile_seconds: float

    def run(self, format_index: int, x: np.ndarray) -> np.ndarray:
        """Cast float64 ``x`` to every mode of ``FORMATS[format_index]``; shape ``(len(MODES), x.size)``."""
        first = format_index * len(MODES)
        proc = subprocess.run(
            [str(self.binary), str(first), str(len(MODES))],
            input=np.ascontiguousarray(x, dtype='<f8').tobytes(),
            capture_output=True,
            check=False,
        )
        assert proc.returncode == 0, f'oracle failed ({proc.returncode}): {proc.stderr.decode()}'
        out = np.frombuffer(proc.stdout, dtype='<f8')
        assert out.size == len(MODES) * x.size, f'oracle returned {out.size} values, expected {len(MODES) * x.size}'
        return out.reshape(len(MODES), x.size)


def case_table() -> str:
    """The generated ``ap_cast_cases.inc``: one cast per (format, mode), format-major as :meth:`Oracle.run` reads."""
    lines = [f'&cast_all<{ap_type(*fmt, rm, om)} >,' for fmt in FORMATS for rm, om in MODES]
    return '\n'.join(lines) + '\n'


@pytest.fixture(scope='session')
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Oracle:
    """Compile the oracle once per session. A missing g++ or a compile error fails the tests (never skips)."""
    gxx = shutil.which('g++')
    assert gxx is not None, 'g++ not found: the ap_fixed oracle tests need it'
    assert (AP_TYPES / 'ap_fixed.h').is_file(), f'ap_fixed.h not found under {AP_TYPES}'
    build = tmp_path_factory.mktemp('ap_oracle')
    (build / 'ap_cast_cases.inc').write_text(case_table())
    binary = build / 'ap_cast'
    cmd = [gxx, '-O1', '-std=c++14', '-w', f'-I{AP_TYPES}', f'-I{build}', str(ORACLE_SRC), '-o', str(binary)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f'g++ failed:\n{" ".join(cmd)}\n{proc.stderr[-5000:]}'
    print(f'ap_fixed oracle: {len(FORMATS) * len(MODES)} casts compiled in {seconds:.1f} s')
    return Oracle(binary, seconds)


def _ties(codes: np.ndarray, f: int) -> np.ndarray:
    """Exact ties ``(c + 1/2) * 2**-f`` for integer codes ``c``."""
    return (codes + 0.5) * 2.0**-f


def oracle_inputs(k: int, i: int, f: int, seed: int = 1234) -> np.ndarray:
    """About 190,000 float64 inputs for format ``(k, i, f)``: specials, exact values, ties and random values."""
    rng = np.random.default_rng(seed)
    b, step = k + i + f, 2.0**-f
    lo_code, hi_code = -k * 2 ** (b - k), 2 ** (b - k) - 1
    far = 2 ** (b + 5)
    sign = rng.choice([-1.0, 1.0], size=22_000)
    codes_in = rng.integers(lo_code - 2, hi_code + 3, size=20_000)
    ties = np.concatenate([_ties(codes_in, f), _ties(rng.integers(-far, far, size=20_000), f)])
    specials = [0.0, -0.0, lo_code * step, hi_code * step, (lo_code - 1) * step, (hi_code + 1) * step]
    parts = [
        np.array(specials + [s * 2.0**e for s in (-1, 1) for e in range(-f - 60, i + 60)]),
        codes_in * step,
        rng.integers(-far, far, size=10_000) * step,
        ties,
        np.nextafter(ties, np.inf),
        np.nextafter(ties, -np.inf),
        rng.uniform(-(2.0 ** (i + 4)), 2.0 ** (i + 4), size=20_000),
        sign[:20_000] * 2.0 ** rng.uniform(-f - 10, i + 4, size=20_000),
        sign[20_000:22_000] * 2.0 ** rng.uniform(i + 4, i + 40, size=2_000),
    ]
    return np.concatenate(parts)


def mismatch_report(x: np.ndarray, expected: np.ndarray, got: np.ndarray, limit: int = 5) -> str:
    """A few offending inputs, with the oracle's value and ours."""
    same = (expected == got) & (np.signbit(expected) == np.signbit(got))
    bad = np.flatnonzero(~(same | (np.isnan(expected) & np.isnan(got))))
    _, first = np.unique(x[bad], return_index=True)
    shown = bad[np.sort(first)[:limit]]
    rows = [
        f'x={float(x[j])!r} ({float(x[j]).hex()}): expected {float(expected[j])!r}, got {float(got[j])!r}'
        for j in shown
    ]
    return f'{bad.size}/{x.size} differ; ' + '; '.join(rows)


@pytest.mark.slow
@pytest.mark.parametrize('format_index', range(len(FORMATS)), ids=[f'k{k}_i{i}_f{f}' for k, i, f in FORMATS])
def test_quantize_matches_ap_fixed(oracle: Oracle, format_index: int) -> None:
    """Every rounding and overflow mode of one format agrees bit for bit with the ap_fixed cast."""
    k, i, f = FORMATS[format_index]
    x = oracle_inputs(k, i, f)
    assert x.size >= 100_000
    expected = oracle.run(format_index, x)
    failures = []
    for row, (rm, om) in enumerate(MODES):
        got = quantize(x, k, i, f, rm, om)
        if not np.array_equal(expected[row], got) or not np.array_equal(np.signbit(expected[row]), np.signbit(got)):
            failures.append(f'{ap_type(k, i, f, rm, om)}: {mismatch_report(x, expected[row], got)}')
    assert not failures, '\n'.join(failures)


def test_nonpositive_width_is_zero() -> None:
    """Elements with ``k + i + f <= 0`` quantize to exactly 0 in every mode, whatever the input."""
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 100, 1000), [0.0, -0.0, 1e30, -1e30, 0.5, -0.5, 2.0**-40]])
    for (k, i, f), (rm, om) in itertools.product([(0, 0, 0), (1, -1, 0), (0, -3, 2), (1, 2, -5), (0, 5, -9)], MODES):
        q = quantize(x, k, i, f, rm, om)
        assert np.array_equal(q, np.zeros_like(x)), f'(k,i,f)=({k},{i},{f}) {rm}/{om}: {q[q != 0][:5]}'


def test_quantize_broadcasts_per_element_formats() -> None:
    """Per-element ``k, i, f`` arrays give the same result as quantizing each column with its scalar format."""
    rng = np.random.default_rng(11)
    k = np.array([1, 0, 1, 0, 1, 0, 1])
    i = np.array([3, 4, 7, -2, 0, 0, -5])
    f = np.array([4, 4, -4, 6, 0, 1, 3])
    x = rng.uniform(-40, 40, size=(500, k.size)) * 2.0 ** rng.integers(-6, 2, size=(500, k.size))
    for rm, om in MODES:
        q = quantize(x, k, i, f, rm, om)
        assert q.shape == x.shape
        for col in range(k.size):
            ref = quantize(x[:, col], int(k[col]), int(i[col]), int(f[col]), rm, om)
            assert np.array_equal(q[:, col], ref), (
                f'{rm}/{om} column {col}: {mismatch_report(x[:, col], ref, q[:, col])}'
            )


def float32_inputs(seed: int = 3) -> np.ndarray:
    """Float32 values (exact in float64) with ties and near ties for f in [-2, 8], zeros and out-of-range values."""
    rng = np.random.default_rng(seed)
    ties = ((rng.integers(-2000, 2000, 4000) + 0.5) * 2.0 ** -rng.integers(-2, 9, 4000)).astype(np.float32)
    parts = [
        np.array([0.0, -0.0], np.float32),
        ties,
        np.nextafter(ties, np.float32(np.inf)),
        np.nextafter(ties, np.float32(-np.inf)),
        rng.uniform(-300, 300, 4000).astype(np.float32),
    ]
    return np.concatenate(parts)


def test_quantize_tensor_matches_quantize() -> None:
    """``quantize_tensor`` on float32 keras tensors equals ``quantize`` in every mode (per-element formats)."""
    kif = np.array([(1, 3, 4), (0, 4, 4), (1, 7, -2), (0, -2, 6), (1, 0, 0), (0, 0, 1), (1, 2, 8), (0, 0, 0)])
    k, i, f = (kif[:, j : j + 1].astype(np.float32) for j in range(3))
    x = float32_inputs()[None, :]
    for rm, om in MODES:
        ref = quantize(x.astype(np.float64), k, i, f, rm, om)
        args = (keras.ops.convert_to_tensor(a) for a in (x, k, i, f))
        got = keras.ops.convert_to_numpy(quantize_tensor(*args, round_mode=rm, overflow_mode=om))
        assert got.dtype == np.float32
        for row in range(kif.shape[0]):
            assert np.array_equal(got[row].astype(np.float64), ref[row]), (
                f'{rm}/{om} kif={kif[row]}: {mismatch_report(x[0].astype(np.float64), ref[row], got[row])}'
            )


def exact_binary_fractions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random exact binary fractions ``n * 2**-e`` of many magnitudes, with some zeros."""
    n = rng.integers(-(2**20), 2**20, size=shape)
    e = rng.integers(-30, 30, size=shape)
    v = n * 2.0 ** -e.astype(np.float64)
    return np.where(rng.random(shape) < 0.05, 0.0, v)


def assert_minimal(v: np.ndarray, k: np.ndarray, i: np.ndarray, f: np.ndarray) -> None:
    """``(k, i, f)`` reproduces ``v`` (per group along the last axis), and one bit less of ``i`` or ``f`` does not."""
    same = np.all(quantize(v, k, i, f, 'RND', 'SAT') == v, axis=-1)
    assert np.all(same), f'{v[~same][:1]} not reproduced by kif={k[~same][:1]},{i[~same][:1]},{f[~same][:1]}'
    nonzero = np.any(v != 0, axis=-1)
    assert np.all((k + i + f)[..., 0][~nonzero] == 0), 'all-zero groups have width 0'
    for di, df in ((1, 0), (0, 1)):
        still = np.all(quantize(v, k, i - di, f - df, 'RND', 'SAT') == v, axis=-1)
        bad = still & nonzero
        assert not np.any(bad), f'i-{di}, f-{df} still reproduces {v[bad][:1]} with kif={k[bad][:1]},{i[bad][:1]}'


def test_minimal_kif_is_minimal() -> None:
    """``minimal_kif`` gives, per element and per group, the smallest format that holds the values exactly."""
    rng = np.random.default_rng(5)
    v = exact_binary_fractions(rng, (400, 6))
    v[0] = 0.0
    v[1] = [2.0**40 + 2.0**-12, 1, 0, 0, 0, 0]
    v[2] = [-(2.0**30), 2.0**30 - 2.0**-20, 0, 0, 0, 0]
    k, i, f = minimal_kif(v)
    assert k.dtype.kind == i.dtype.kind == f.dtype.kind == 'i'
    assert all(isinstance(a, np.ndarray) for a in minimal_kif([0.75, -2.0], axis=0))
    assert_minimal(v[..., None], k[..., None], i[..., None], f[..., None])
    kg, ig, fg = minimal_kif(v, axis=1)
    assert kg.shape == (400,)
    assert (kg[0], ig[0] + fg[0]) == (0, 0), 'an all-zero group has width 0'
    assert_minimal(v, kg[:, None], ig[:, None], fg[:, None])


@pytest.mark.parametrize(
    ('kif', 'modes', 'expected'),
    [
        ((1, 3, 4), ('TRN', 'WRAP'), 'ap_fixed<8,4>'),
        ((0, 2, 3), ('RND', 'SAT'), 'ap_ufixed<5,2,AP_RND,AP_SAT>'),
        ((1, 7, -4), ('TRN', 'WRAP'), 'ap_fixed<4,8>'),
        ((1, -3, 6), ('RND_CONV', 'SAT_SYM'), 'ap_fixed<4,-2,AP_RND_CONV,AP_SAT_SYM>'),
        ((0, 0, 1), ('TRN_ZERO', 'WRAP'), 'ap_ufixed<1,0,AP_TRN_ZERO,AP_WRAP>'),
        ((1, 0, 0), ('TRN', 'SAT'), 'ap_fixed<1,1,AP_TRN,AP_SAT>'),
    ],
)
def test_fixed_type_string(kif: tuple[int, int, int], modes: tuple[str, str], expected: str) -> None:
    """Type strings follow ``ap_fixed<k+i+f, k+i>`` / ``ap_ufixed<i+f, i>``; default modes are left out."""
    assert fixed_type_string(*kif, *modes) == expected


@pytest.mark.parametrize('kif', [(0, 0, 0), (1, -1, 0), (0, 3, -5), (1, -4, 2)])
def test_fixed_type_string_rejects_empty_width(kif: tuple[int, int, int]) -> None:
    """A width ``k + i + f <= 0`` has no ap type."""
    with pytest.raises(ValueError, match='width'):
        fixed_type_string(*kif)


def test_fixed_type_string_rejects_bad_arguments() -> None:
    """Bad sign bits and mode names raise ``ValueError``."""
    for args in [(2, 3, 4), (1, 3, 4, 'ROUND'), (1, 3, 4, 'RND', 'CLIP')]:
        with pytest.raises(ValueError):
            fixed_type_string(*args)
