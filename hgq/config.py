"""Run configurations: a YAML file naming the data set, the model, training and export, validated up front.

Every error names the offending key (``training.optimizer``) and what was expected, before any training starts.

Examples
--------
A minimal configuration (all other keys take their defaults)::

    name: digits_mlp
    dataset: {name: digits}
    model:
      layers:
        - {type: HQuantize}
        - {type: HDense, units: 32, activation: relu}
        - {type: HDense, units: 10}
    training: {epochs: 60, beta: {schedule: [[0, 1.0e-7], [60, 1.0e-4]], interpolation: log}}
    export: {n_models: 2}
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from hgq.backend import check_data_parallel
from hgq.callbacks import INTERPOLATIONS, BetaSchedule, BetaTarget
from hgq.conversion import BACKENDS, IO_TYPES, PART_PATTERN, STRATEGIES, ConversionSettings
from hgq.datasets import DATASETS

__all__ = ['ConfigError', 'RunConfig', 'load_config', 'parse_config', 'build_layers', 'build_model', 'layer_types']

OPTIMIZERS = {'adam': 'Adam', 'adamw': 'AdamW', 'sgd': 'SGD', 'rmsprop': 'RMSprop', 'nadam': 'Nadam'}
LR_SCHEDULES = ('constant', 'cosine')
# training.distribution: 'none' (one device) or 'data_parallel' (every local device, hgq.backend.data_parallel).
DISTRIBUTIONS = ('none', 'data_parallel')
# The conversion defaults (one place: hgq.conversion.ConversionSettings).
HLS_DEFAULTS = ConversionSettings()
KERAS_LAYERS = {'Flatten': keras.layers.Flatten, 'Reshape': keras.layers.Reshape, 'Dropout': keras.layers.Dropout}


class ConfigError(ValueError):
    """A run configuration is invalid; the message names the key and what was expected."""


def _h_layer_types() -> dict[str, type]:
    import hgq.layers

    return {name: getattr(hgq.layers, name) for name in hgq.layers.__all__ if name != 'HLayer'}


def layer_types() -> dict[str, type]:
    """Layer types a configuration may name: every H-layer plus Keras's Flatten, Reshape and Dropout."""
    return {**_h_layer_types(), **KERAS_LAYERS}


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BetaConfig:
    kind: str  # 'schedule' or 'target'
    schedule: Any = 0.0
    interpolation: str = 'linear'
    target: float | None = None
    target_options: dict[str, Any] = field(default_factory=dict)

    def callback(self) -> keras.callbacks.Callback:
        """The callback that sets ``beta`` during training."""
        if self.kind == 'target':
            return BetaTarget(self.target, **self.target_options)
        return BetaSchedule(self.schedule, self.interpolation)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = 'adam'
    learning_rate: float = 3e-3
    lr_schedule: str = 'constant'
    lr_final: float = 0.01
    beta: BetaConfig = field(default_factory=lambda: BetaConfig('schedule', 1e-6))
    distribution: str = 'none'
    # The Pareto front ranks and saves each epoch's model calibrated on the training set (ParetoFront calibration_data).
    calibrated_front: bool = True


@dataclass(frozen=True)
class ExportConfig:
    n_models: int = 2
    min_metric: float | None = None
    backend: str = HLS_DEFAULTS.backend
    part: str = HLS_DEFAULTS.part
    clock_period: float = HLS_DEFAULTS.clock_period
    io_type: str = HLS_DEFAULTS.io_type
    strategy: str = HLS_DEFAULTS.strategy
    n_test: int | None = None
    synth: bool = False

    def hls_settings(self) -> ConversionSettings:
        """The conversion settings of this section (shared with :func:`hgq.to_hls` and ``hgq convert``)."""
        return ConversionSettings(self.backend, self.part, self.clock_period, self.io_type, self.strategy)


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module docstring for the YAML form)."""

    name: str
    dataset: DatasetConfig
    layers: tuple[dict[str, Any], ...]
    training: TrainingConfig = field(default_factory=TrainingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0
    output: str = 'hgq_runs'

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (the form written to a run directory)."""
        beta = self.training.beta
        beta_dict: dict[str, Any] = (
            {'target': beta.target, **beta.target_options}
            if beta.kind == 'target'
            else {'schedule': beta.schedule, 'interpolation': beta.interpolation}
        )
        training = {**asdict(self.training), 'beta': beta_dict}
        return {
            'name': self.name,
            'seed': self.seed,
            'output': self.output,
            'dataset': {'name': self.dataset.name, **self.dataset.options},
            'model': {'layers': [dict(layer) for layer in self.layers]},
            'training': training,
            'export': asdict(self.export),
        }


class _Section:
    """Reads keys of one mapping, checking types and allowed values, and rejects unknown keys at the end."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f'{where}: expected a mapping of keys, got {type(data).__name__} {data!r}')
        self.data, self.where, self.used = dict(data), where, set()

    def key(self, name: str) -> str:
        return f'{self.where}.{name}' if self.where else name

    def get(
        self,
        name: str,
        default: Any,
        kind: type | tuple[type, ...] | None = None,
        choices: tuple[Any, ...] | None = None,
        check: Callable[[Any], bool] | None = None,
        expected: str = '',
    ) -> Any:
        self.used.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        if value is None and default is None:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else ' or '.join(k.__name__ for k in kind)
            raise ConfigError(f'{self.key(name)}: expected {expected or names}, got {value!r}')
        if kind is float and not math.isfinite(value):
            raise ConfigError(f'{self.key(name)}: expected {expected or "a finite number"}, got {value!r}')
        if choices is not None and value not in choices:
            raise ConfigError(f'{self.key(name)}: expected one of {list(choices)}, got {value!r}')
        if check is not None and not check(value):
            raise ConfigError(f'{self.key(name)}: expected {expected}, got {value!r}')
        return value

    def rest(self) -> dict[str, Any]:
        """Keys not read yet (for sections that pass them on)."""
        return {k: v for k, v in self.data.items() if k not in self.used}

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f'{self.where or "config"}: unknown keys {unknown}; allowed: {sorted(self.used)}')


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_dataset(data: Any) -> DatasetConfig:
    if isinstance(data, str):
        data = {'name': data}
    section = _Section(data, 'dataset')
    name = section.get('name', None, str, tuple(DATASETS))
    if name is None:
        raise ConfigError(f'dataset.name: required, one of {sorted(DATASETS)}')
    options = section.rest()
    allowed = {'digits': (), 'fashion_mnist': ('path',), 'jets': ('path', 'data_home', 'download')}[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f'dataset: unknown keys {unknown} for {name!r}; allowed: {["name", *allowed]}')
    return DatasetConfig(name, options)


def _parse_layers(data: Any) -> tuple[dict[str, Any], ...]:
    section = _Section(data, 'model')
    layers = section.get('layers', None, list, expected='a list of layers like {type: HDense, units: 32}')
    section.done()
    if not layers:
        raise ConfigError('model.layers: required, a non-empty list of layers like {type: HDense, units: 32}')
    specs = tuple(dict(layer) if isinstance(layer, Mapping) else layer for layer in layers)
    build_layers(specs)
    return specs


def build_layers(specs: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[keras.layers.Layer]:
    """Build the layers of ``model.layers``; errors name the layer's index and type.

    Examples
    --------
    >>> [type(layer).__name__ for layer in build_layers([{'type': 'HQuantize'}, {'type': 'HDense', 'units': 4}])]
    ['HQuantize', 'HDense']
    """
    types = layer_types()
    layers = []
    for index, spec in enumerate(specs):
        where = f'model.layers[{index}]'
        if not isinstance(spec, Mapping) or 'type' not in spec:
            raise ConfigError(f'{where}: expected a mapping with a "type" key, like {{type: HDense, units: 32}}')
        kwargs = {k: v for k, v in spec.items() if k != 'type'}
        if spec['type'] not in types:
            raise ConfigError(f'{where}.type: expected one of {sorted(types)}, got {spec["type"]!r}')
        try:
            layers.append(types[spec['type']](**kwargs))
        except (TypeError, ValueError) as err:
            raise ConfigError(f'{where} ({spec["type"]}): {err}') from None
    return layers


def _parse_beta(data: Any) -> BetaConfig:
    if isinstance(data, int | float) and not isinstance(data, bool):
        data = {'schedule': float(data)}
    section = _Section(data, 'training.beta')
    if 'target' in section.data:
        target = section.get('target', None, float, check=lambda v: v > 0, expected='a positive number of EBOPs')
        options = section.rest()
        allowed = ('beta_init', 'gain', 'rate', 'max_factor', 'tolerance', 'beta_min', 'beta_max', 'warmup')
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f'training.beta: unknown keys {unknown} with target; allowed: {["target", *allowed]}')
        try:
            BetaTarget(target, **options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f'training.beta: {err}') from None
        return BetaConfig('target', target=target, target_options=options)
    schedule = section.get('schedule', 1e-6, (int, float, list), expected='a number or a list of [epoch, beta] pairs')
    interpolation = section.get('interpolation', 'linear', str, INTERPOLATIONS)
    section.done()
    try:
        BetaSchedule(schedule, interpolation)
    except ValueError as err:
        raise ConfigError(f'training.beta.schedule: {err}') from None
    if isinstance(schedule, list):
        schedule = [list(point) for point in schedule]
    return BetaConfig('schedule', schedule=schedule, interpolation=interpolation)


def _parse_training(data: Any) -> TrainingConfig:
    s = _Section(data, 'training')
    positive = {'check': lambda v: v > 0, 'expected': 'a finite positive number'}
    config = TrainingConfig(
        epochs=s.get('epochs', 60, int, check=_positive_int, expected='a positive integer'),
        batch_size=s.get('batch_size', 64, int, check=_positive_int, expected='a positive integer'),
        optimizer=s.get('optimizer', 'adam', str, tuple(OPTIMIZERS)),
        learning_rate=s.get('learning_rate', 3e-3, float, **positive),
        lr_schedule=s.get('lr_schedule', 'constant', str, LR_SCHEDULES),
        lr_final=s.get('lr_final', 0.01, float, check=lambda v: 0 <= v <= 1, expected='a fraction in [0, 1]'),
        beta=_parse_beta(s.get('beta', 1e-6)),
        distribution=s.get('distribution', 'none', str, DISTRIBUTIONS),
        calibrated_front=s.get('calibrated_front', True, bool),
    )
    s.done()
    if config.distribution == 'data_parallel':
        try:
            check_data_parallel()
        except ValueError as err:
            raise ConfigError(f'training.distribution: {err}') from None
    return config


def _parse_export(data: Any) -> ExportConfig:
    s = _Section(data, 'export')
    config = ExportConfig(
        n_models=s.get('n_models', 2, int, check=lambda v: v >= 0, expected='an integer >= 0'),
        min_metric=s.get('min_metric', None, float),
        backend=s.get('backend', HLS_DEFAULTS.backend, str, BACKENDS),
        part=s.get(
            'part',
            HLS_DEFAULTS.part,
            str,
            check=PART_PATTERN.match,
            expected='a Xilinx part name such as xcvu13p-flga2577-2-e or xc7z020clg400-1',
        ),
        clock_period=s.get(
            'clock_period',
            HLS_DEFAULTS.clock_period,
            float,
            check=lambda v: v > 0,
            expected='a finite positive number (ns)',
        ),
        io_type=s.get('io_type', HLS_DEFAULTS.io_type, str, IO_TYPES),
        strategy=s.get('strategy', HLS_DEFAULTS.strategy, str, STRATEGIES),
        n_test=s.get('n_test', None, int, check=_positive_int, expected='a positive integer'),
        synth=s.get('synth', False, bool),
    )
    s.done()
    return config


def parse_config(data: Any, name: str = 'run') -> RunConfig:
    """Validate a configuration given as plain data (e.g. loaded YAML) and return a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming the key and the expected values.

    Examples
    --------
    >>> config = parse_config({'dataset': 'digits', 'model': {'layers': [{'type': 'HDense', 'units': 10}]}})
    >>> config.training.epochs, config.export.backend
    (60, 'Vitis')
    """
    top = _Section(data, '')
    config = RunConfig(
        name=top.get('name', name, str, check=lambda v: v and '/' not in v, expected='a name without "/"'),
        seed=top.get('seed', 0, int, check=lambda v: 0 <= v < 2**32, expected='an integer in [0, 2**32)'),
        output=top.get('output', 'hgq_runs', str),
        dataset=_parse_dataset(top.get('dataset', None)),
        layers=_parse_layers(top.get('model', None)),
        training=_parse_training(top.get('training', None)),
        export=_parse_export(top.get('export', None)),
    )
    top.done()
    return config


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read and validate a YAML run configuration; its name defaults to the file name.

    Examples
    --------
    >>> config = load_config('configs/digits_mlp.yaml')  # doctest: +SKIP
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'no configuration file at {path}')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f'{path}: not valid YAML: {err}') from None
    try:
        return parse_config(data, name=path.stem)
    except ConfigError as err:
        raise ConfigError(f'{path}: {err}') from None


def build_model(config: RunConfig, input_shape: tuple[int, ...], n_outputs: int | None = None) -> keras.Model:
    """The Sequential model of ``config.layers`` on inputs of ``input_shape``.

    Checks that the model builds and, when ``n_outputs`` is given, that its last axis has that size.
    """
    layers = build_layers(config.layers)
    try:
        model = keras.Sequential([keras.Input(input_shape), *layers], name=config.name)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'model.layers: the model does not build on inputs of shape {input_shape}: {err}') from None
    out = model.output_shape[-1]
    if n_outputs is not None and out != n_outputs:
        raise ConfigError(
            f'model.layers[{len(layers) - 1}]: the model outputs {out} values per sample, the data set has '
            f'{n_outputs} classes'
        )
    return model
