"""Grids of run configurations: ``--grid key=v1,v2`` axes, dotted paths into the YAML, one trial per grid point.

A grid axis names a dotted path into the run configuration (``seed``, ``training.epochs``,
``model.layers.2.units``; a number indexes a list) and the values it takes. The grid is the Cartesian product of
its axes, in the order given; every point is checked with :func:`hgq.config.parse_config` before anything runs,
so a bad value is reported with the ``--grid`` key it came from.

Examples
--------
>>> axes = [parse_axis('seed=0,1'), parse_axis('model.layers.1.units=16,32')]
>>> [trial.name for trial in grid_trials(axes)]
['seed=0_units=16', 'seed=0_units=32', 'seed=1_units=16', 'seed=1_units=32']
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ['GridAxis', 'Trial', 'parse_axis', 'grid_trials', 'set_path', 'resolve_trials']

# Grid keys that do not describe a trial: the sweep names trials and places their directories itself.
RESERVED_KEYS = ('name', 'output')
_VALUE_CHARS = re.compile(r'[^A-Za-z0-9._+-]+')  # runs of these become one '-' in a trial's directory name
_MODEL_NAME_CHARS = re.compile(r'[^A-Za-z0-9_.-]')  # what Keras accepts in a model's name
_MAX_NAME = 80


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with ``1e-4`` read as a float (plain YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'),
)


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid`` option: a dotted ``key`` into the configuration and the ``values`` it takes."""

    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Trial:
    """One grid point: its directory ``name`` and the ``overrides`` (dotted key -> value) it applies."""

    name: str
    overrides: tuple[tuple[str, Any], ...]

    def label(self) -> str:
        """``key=value`` pairs as given on the command line."""
        return ' '.join(f'{key}={_text(value)}' for key, value in self.overrides) or '(base configuration)'


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))


def _split_values(text: str) -> list[str]:
    """Split at commas outside brackets and braces: ``[0,1],[2,3]`` gives two values."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in '[{':
            depth += 1
        elif char in ']}':
            depth -= 1
        elif char == ',' and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]


def parse_axis(text: str) -> GridAxis:
    """Parse ``key=v1,v2,...``; values are read as YAML (``16`` an int, ``1e-4`` a float, ``[1, 2]`` a list).

    Raises
    ------
    ValueError
        Naming the ``--grid`` option and what was expected.

    Examples
    --------
    >>> parse_axis('training.beta.schedule=1e-6,[[0,1e-7],[10,1e-5]]')
    GridAxis(key='training.beta.schedule', values=(1e-06, [[0, 1e-07], [10, 1e-05]]))
    """
    key, sep, values_text = text.partition('=')
    key = key.strip()
    if not sep or not key or not values_text.strip():
        raise ValueError(f'--grid {text!r}: expected key=value1,value2,... (e.g. seed=0,1,2)')
    if any(not part for part in key.split('.')):
        raise ValueError(f'--grid {text!r}: the key {key!r} has an empty part; expected a dotted path like a.b.0.c')
    if key.split('.')[0] in RESERVED_KEYS:
        raise ValueError(f'--grid {text!r}: {key!r} cannot vary; the sweep names its trials itself')
    values = []
    for part in _split_values(values_text):
        if not part:
            raise ValueError(f'--grid {text!r}: empty value; expected key=value1,value2,...')
        try:
            values.append(yaml.load(part, Loader=_Loader))
        except yaml.YAMLError as err:
            raise ValueError(f'--grid {key}: value {part!r} is not valid YAML: {err}') from None
    if len({_text(v) for v in values}) != len(values):
        raise ValueError(f'--grid {key}: values repeat in {values_text!r}')
    return GridAxis(key, tuple(values))


def set_path(config: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a plain configuration in place; missing mappings on the way are created.

    Examples
    --------
    >>> config = {'model': {'layers': [{'type': 'HQuantize'}, {'type': 'HDense', 'units': 8}]}}
    >>> set_path(config, 'model.layers.1.units', 16); set_path(config, 'training.epochs', 5)
    >>> config['model']['layers'][1]['units'], config['training']
    (16, {'epochs': 5})
    """
    parts = key.split('.')
    node: Any = config
    for depth, part in enumerate(parts):
        where = '.'.join(parts[:depth]) or 'the configuration'
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                size = len(node)
                raise ValueError(f'--grid {key}: {where} has {size} items; expected an index < {size}, got {part!r}')
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise ValueError(f'--grid {key}: {where} is {node!r}, not a mapping or a list')
        if depth == len(parts) - 1:
            node[index] = copy.deepcopy(value)
            return
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = node[index]


def _short_key(key: str, keys: Sequence[str]) -> str:
    """The shortest dotted suffix of ``key`` that no other key ends with and that starts with a name.

    ``units`` for ``model.layers.1.units`` alone; ``layers.1.units`` beside ``x.units``.
    """
    parts = key.split('.')
    for n in range(1, len(parts) + 1):
        suffix = '.'.join(parts[-n:])
        if parts[-n].isdigit():  # 'layers.1.units', not '1.units'
            continue
        if not any(other != key and (other == suffix or other.endswith('.' + suffix)) for other in keys):
            return suffix
    return key


def _trial_name(overrides: Sequence[tuple[str, Any]]) -> str:
    """``key=value`` pairs joined by ``_``; a hash of the overrides is appended if a value had to be simplified
    (``beta=target-2000-1a2b3c4d`` for ``{target: 2000}``) or the name is long."""
    keys = [key for key, _ in overrides]
    texts = [_text(value) for _, value in overrides]
    slugs = [text if not _VALUE_CHARS.search(text) else _VALUE_CHARS.sub('-', text).strip('-') for text in texts]
    name = '_'.join(f'{_short_key(key, keys)}={slug}' for key, slug in zip(keys, slugs, strict=True)) or 'base'
    if slugs != texts or len(name) > _MAX_NAME:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        name = f'{name[:_MAX_NAME]}-{digest}'
    return name


def grid_trials(axes: Sequence[GridAxis]) -> list[Trial]:
    """The trials of a grid: the Cartesian product of ``axes`` (the first axis varies slowest).

    Raises
    ------
    ValueError
        If two axes name the same key.
    """
    keys = [axis.key for axis in axes]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f'--grid: the keys {repeated} are given more than once; give each key once with all values')
    trials = []
    for values in itertools.product(*(axis.values for axis in axes)):
        overrides = tuple(zip(keys, values, strict=True))
        trials.append(Trial(_trial_name(overrides), overrides))
    return trials


def resolve_trials(base: Mapping[str, Any], trials: Sequence[Trial], name: str) -> list[dict[str, Any]]:
    """The plain configuration of every trial: ``base`` with the trial's overrides, named ``<name>-<trial>``
    (with characters that Keras does not accept in a model name replaced by ``_``).

    Each configuration is validated with :func:`hgq.config.parse_config`; an error names the trial and the key.
    """
    from hgq.config import ConfigError, parse_config

    configs = []
    for trial in trials:
        config = copy.deepcopy(dict(base))
        for key, value in trial.overrides:
            set_path(config, key, value)
        config['name'] = _MODEL_NAME_CHARS.sub('_', f'{name}-{trial.name}')
        try:
            parse_config(config)
        except ConfigError as err:
            raise ConfigError(f'grid point {trial.label()}: {err}') from None
        configs.append(config)
    return configs
