"""Conversion settings and the bit-exact check, shared by :func:`hgq.to_hls`, the YAML run configuration and the
``hgq convert`` command. Nothing here imports hls4ml or Keras: configurations validate without loading them.

Examples
--------
>>> settings = ConversionSettings(backend='vitis', io_type='io_stream')
>>> settings.backend, settings.io_type, settings.clock_period
('Vitis', 'io_stream', 5.0)
>>> result = compare_outputs(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 2.0, 3.0, 4.5]))
>>> result.mismatched_samples, result.mismatched_values
(1, 1)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    'BACKENDS',
    'IO_TYPES',
    'STRATEGIES',
    'CPP_RESERVED',
    'ConversionError',
    'ConversionSettings',
    'CheckResult',
    'compare_outputs',
    'check_bit_exact',
    'META_FILE',
    'read_meta',
]

META_FILE = 'hgq_meta.json'

BACKENDS = ('Vivado', 'Vitis')
IO_TYPES = ('io_parallel', 'io_stream')
STRATEGIES = ('Latency', 'Resource', 'distributed_arithmetic')
# Xilinx part names: 'xc' + family/device, then '-'-separated package, speed grade and temperature fields,
# e.g. xcvu13p-flga2577-2-e, xcu250-figd2104-2L-e, xc7z020clg400-1.
PART_PATTERN = re.compile(r'^xc[a-z0-9]+(-[a-z0-9]+)*$', re.IGNORECASE)
# Names the top function cannot take: C++ keywords and alternative tokens, and main.
CPP_RESERVED = frozenset(
    """alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t char32_t class
    compl concept const consteval constexpr constinit const_cast continue co_await co_return co_yield decltype
    default delete do double dynamic_cast else enum explicit export extern false float for friend goto if inline
    int long mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public register
    reinterpret_cast requires return short signed sizeof static static_assert static_cast struct switch template
    this thread_local throw true try typedef typeid typename union unsigned using virtual void volatile wchar_t
    while xor xor_eq main""".split()
)


class ConversionError(ValueError):
    """A model or a setting that cannot be converted bit-exactly; the message says what and how to fix it."""


def _canonical(value: Any, choices: tuple[str, ...], what: str) -> str:
    for choice in choices:
        if isinstance(value, str) and value.lower() == choice.lower():
            return choice
    raise ConversionError(f'{what} must be one of {choices}, got {value!r}')


@dataclass(frozen=True)
class ConversionSettings:
    """The hls4ml project settings of a conversion, validated on construction.

    The defaults here are the only ones: :func:`hgq.to_hls`, the ``export`` section of a run configuration and
    ``hgq convert`` all start from them.

    Parameters
    ----------
    backend : {'Vitis', 'Vivado'}
        hls4ml backend (spelling is not case-sensitive).
    part : str
        Xilinx FPGA part, e.g. ``'xcvu13p-flga2577-2-e'``.
    clock_period : float
        Target clock period in ns (finite, positive).
    io_type : {'io_parallel', 'io_stream'}
        Whole tensors per call, or streams of packed channels (CNNs).
    strategy : {'Latency', 'Resource', 'distributed_arithmetic'}
        hls4ml strategy of every layer; ``distributed_arithmetic`` (da4ml) builds shift-add logic.
    project_name : str
        Name of the top function and of the HLS project: a C identifier that is not a C++ keyword.

    Raises
    ------
    ConversionError
        Naming the setting and what was expected.

    Examples
    --------
    >>> ConversionSettings(strategy='latency').strategy
    'Latency'
    >>> ConversionSettings(project_name='class')
    Traceback (most recent call last):
    ...
    hgq.conversion.ConversionError: project_name 'class' is a C++ keyword; choose another name
    """

    backend: str = 'Vitis'
    part: str = 'xcvu13p-flga2577-2-e'
    clock_period: float = 5.0
    io_type: str = 'io_parallel'
    strategy: str = 'Latency'
    project_name: str = 'myproject'

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, 'backend', _canonical(self.backend, BACKENDS, 'backend'))
        set_(self, 'io_type', _canonical(self.io_type, IO_TYPES, 'io_type'))
        set_(self, 'strategy', _canonical(self.strategy, STRATEGIES, 'strategy'))
        if not isinstance(self.part, str) or not PART_PATTERN.match(self.part):
            raise ConversionError(
                f'part must be a Xilinx part name such as xcvu13p-flga2577-2-e or xc7z020clg400-1, got {self.part!r}'
            )
        period = self.clock_period
        is_number = isinstance(period, int | float) and not isinstance(period, bool)
        if not (is_number and math.isfinite(period) and period > 0):
            raise ConversionError(f'clock_period must be a finite positive number of ns, got {period!r}')
        set_(self, 'clock_period', float(period))
        name = self.project_name
        if not isinstance(name, str) or not name.isascii() or not name.isidentifier():
            raise ConversionError(f'project_name must be a C identifier (letters, digits, _), got {name!r}')
        if name in CPP_RESERVED:
            raise ConversionError(f'project_name {name!r} is a C++ keyword; choose another name')
        if self.strategy == 'distributed_arithmetic' and find_spec('da4ml') is None:
            raise ConversionError(
                "strategy='distributed_arithmetic' needs the da4ml package: pip install 'hgq-fpga[da]'"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings, e.g. to split them from other keyword arguments."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data."""
        return asdict(self)


@dataclass(frozen=True)
class CheckResult:
    """Outcome of a bit-exact comparison of the firmware's C simulation with Keras.

    Samples whose input or Keras output is not finite (inf, NaN; Keras also gives NaN for finite inputs too large
    for float32 arithmetic in the quantizer) cannot be compared: fixed point has no inf or NaN. They are counted
    in ``nonfinite_samples`` and left out of the comparison.
    """

    n_samples: int
    mismatched_samples: int
    mismatched_values: int
    nonfinite_samples: int
    max_abs_diff: float

    @property
    def exact(self) -> bool:
        """Every comparable sample is equal bit for bit."""
        return self.mismatched_samples == 0

    def describe(self) -> str:
        """One line for people, e.g. ``bit-exact check: 0 of 1000 samples differ from Keras (0 output values)``."""
        compared = self.n_samples - self.nonfinite_samples
        text = (
            f'bit-exact check: {self.mismatched_samples} of {compared} samples differ from Keras '
            f'({self.mismatched_values} output values)'
        )
        if self.nonfinite_samples:
            text += (
                f'; {self.nonfinite_samples} samples not compared: their input or Keras output is inf/NaN, which '
                'fixed-point firmware cannot represent'
            )
        return text


def _as_list(values: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in values] if isinstance(values, list | tuple) else [np.asarray(values)]


def _finite_rows(arrays: list[np.ndarray], n: int) -> np.ndarray:
    finite = np.ones(n, dtype=bool)
    for a in arrays:
        if np.issubdtype(a.dtype, np.floating):
            finite &= np.isfinite(a.reshape(n, -1)).all(axis=1)
    return finite


def compare_outputs(keras_outputs: Any, hls_outputs: Any, inputs: Any = None) -> CheckResult:
    """Compare Keras outputs with the C simulation's exactly (``==`` on float64), sample by sample.

    Parameters
    ----------
    keras_outputs : array or list of arrays
        ``model.predict(x)``; one array per model output.
    hls_outputs : array or list of arrays
        ``hls_model.predict(x)``, in the same order; each is reshaped to its Keras output's shape.
    inputs : array or list of arrays, optional
        The inputs, to leave out samples with non-finite inputs.
    """
    keras_list = [k.astype(np.float64) for k in _as_list(keras_outputs)]
    hls_list = _as_list(hls_outputs)
    if len(keras_list) != len(hls_list):
        raise ValueError(f'{len(keras_list)} Keras outputs but {len(hls_list)} C-simulation outputs')
    n = len(keras_list[0])
    hls_list = [np.asarray(h, dtype=np.float64).reshape(k.shape) for k, h in zip(keras_list, hls_list, strict=True)]
    comparable = _finite_rows(keras_list, n) & _finite_rows(_as_list(inputs) if inputs is not None else [], n)
    bad_samples, bad_values, max_diff = np.zeros(n, dtype=bool), 0, 0.0
    for k, h in zip(keras_list, hls_list, strict=True):
        k, h = k.reshape(n, -1)[comparable], h.reshape(n, -1)[comparable]
        diff = k != h
        bad_values += int(diff.sum())
        bad_samples[comparable] |= diff.any(axis=1)
        if diff.any():
            max_diff = max(max_diff, float(np.max(np.abs(k - h))))
    return CheckResult(n, int(bad_samples.sum()), bad_values, int(n - comparable.sum()), max_diff)


def check_bit_exact(model: Any, hls_model: Any, x: Any, batch_size: int = 1024) -> tuple[CheckResult, list[np.ndarray]]:
    """Run ``model`` (Keras) and the compiled ``hls_model`` (C simulation) on ``x`` and compare them exactly.

    Returns the :class:`CheckResult` and the C-simulation outputs (one float64 array per model output, shaped as
    Keras's), e.g. to compute an accuracy.

    Examples
    --------
    >>> hls_model = hgq.to_hls(model, 'prj/'); hls_model.compile()  # doctest: +SKIP
    >>> result, hls_outputs = check_bit_exact(model, hls_model, x_test)  # doctest: +SKIP
    >>> print(result.describe())  # doctest: +SKIP
    """
    inputs = [np.ascontiguousarray(v, dtype=np.float64) for v in _as_list(x)]
    keras_in = list(x) if isinstance(x, list | tuple) else x
    keras_out = _as_list(model.predict(keras_in, batch_size=batch_size, verbose=0))
    hls_out = _as_list(hls_model.predict(inputs if len(inputs) > 1 else inputs[0]))
    result = compare_outputs(keras_out, hls_out, inputs)
    shaped = [np.asarray(h, dtype=np.float64).reshape(k.shape) for k, h in zip(keras_out, hls_out, strict=True)]
    return result, shaped


def read_meta(output_dir: str | Path) -> dict[str, Any] | None:
    """The ``hgq_meta.json`` that :func:`hgq.to_hls` wrote into a project directory, or ``None`` if there is none.

    Raises
    ------
    ConversionError
        If the file is not a JSON object (corrupt or edited by hand); the message names the file.
    """
    path = Path(output_dir) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f'{path} is not valid JSON ({err}); delete it or convert the model again') from None
    if not isinstance(meta, dict):
        raise ConversionError(f'{path} must hold a JSON object, got {type(meta).__name__}')
    return meta
