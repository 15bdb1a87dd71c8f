"""The layering of the package: which parts may import which, what ``import hgq`` loads, and that the converter's
hls4ml extensions leave plain hls4ml models alone.

Parts, from the bottom up (a module may import modules of its own part or below, never above):

0. math: ``fixed_point``, ``conversion`` (settings and the bit-exact check, plain data), ``fileio``, ``_version``,
   ``backend`` (exact float32 and float64 scopes per Keras backend)
1. quantizer: ``quantizer``, ``lut``
2. layers: ``hgq.layers``
3. training: ``ebops``, ``calibrate``, ``callbacks``, ``summary``, ``datasets``, ``exactness``, ``cost``
4. convert: ``hgq.convert``, ``report`` (the only places that import hls4ml)
5. face: ``run``, ``config``, ``demo``, ``plot``, the command line ``hgq_cli`` and every other module
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {
    'hgq.fixed_point': 0,
    'hgq.conversion': 0,
    'hgq.fileio': 0,
    'hgq._version': 0,
    'hgq.backend': 0,
    'hgq.quantizer': 1,
    'hgq.lut': 1,
    'hgq.layers': 2,
    'hgq.ebops': 3,
    'hgq.calibrate': 3,
    'hgq.callbacks': 3,
    'hgq.summary': 3,
    'hgq.datasets': 3,
    'hgq.exactness': 3,
    'hgq.cost': 3,
    'hgq.convert': 4,
    'hgq.report': 4,
}
FACE = 5
HLS4ML_PART = 4


def part(module: str) -> int:
    """The part of a module of ours (the longest matching prefix in PARTS; the face by default)."""
    names = module.split('.')
    for n in range(len(names), 0, -1):
        prefix = '.'.join(names[:n])
        if prefix in PARTS:
            return PARTS[prefix]
    return FACE


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ('hgq', 'hgq_cli'):
        for path in sorted((ROOT / package).rglob('*.py')):
            relative = path.relative_to(ROOT).with_suffix('')
            names = list(relative.parts)
            if names[-1] == '__init__':
                names.pop()
            found.append(('.'.join(names), path))
    return found


def imports(path: Path, module: str) -> list[str]:
    """Every module ``path`` imports, at module level or inside functions, with relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.')[: len(module.split('.')) - node.level + (path.name == '__init__.py')]
                found.append('.'.join([*base, node.module] if node.module else base))
            else:
                found.append(node.module)
                found += [f'{node.module}.{alias.name}' for alias in node.names if node.module in ('hgq', 'hgq_cli')]
    return found


@pytest.mark.parametrize(('module', 'path'), modules(), ids=[m for m, _ in modules()])
def test_no_module_imports_a_part_above_its_own(module: str, path: Path) -> None:
    if module == 'hgq':
        return  # the package front imports what it re-exports, lazily where heavy
    own = part(module)
    for name in imports(path, module):
        if name.split('.')[0] in ('hgq', 'hgq_cli') and name not in ('hgq', 'hgq_cli'):
            assert part(name) <= own, f'{module} (part {own}) imports {name} (part {part(name)})'
        if name.split('.')[0] == 'hls4ml':
            assert own >= HLS4ML_PART, f'{module} (part {own}) imports hls4ml; only the converter may'


def test_the_part_table_names_modules_that_exist() -> None:
    existing = {m for m, _ in modules()}
    for name in PARTS:
        assert any(m == name or m.startswith(f'{name}.') for m in existing), name


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_import_hgq_and_layers_loads_no_hls4ml_and_models_still_load(tmp_path: Path) -> None:
    code = f"""
import sys, keras, hgq, hgq.layers
assert 'hls4ml' not in sys.modules, 'hls4ml was imported'
model = keras.Sequential([keras.Input((4,)), hgq.layers.HQuantize(), hgq.layers.HDense(2)])
model.save({str(tmp_path / 'm.keras')!r})
keras.models.load_model({str(tmp_path / 'm.keras')!r})
assert 'hls4ml' not in sys.modules, 'hls4ml was imported by training code'
import hgq.convert
assert 'hls4ml' in sys.modules
"""
    _python(code)


def test_hgq_help_imports_neither_tensorflow_nor_hls4ml() -> None:
    code = """
import contextlib, io, sys
from hgq_cli import main
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main(['--help'])
assert 'convert' in out.getvalue()
print(sorted(m for m in ('tensorflow', 'keras', 'hls4ml', 'hgq') if m in sys.modules))
"""
    assert _python(code).strip() == '[]'


PLAIN_MODEL = """
import sys, keras, hls4ml
keras.utils.set_random_seed(1)
inp = keras.Input((6, 6, 2), name='x')
x = keras.layers.Conv2D(3, 3, padding='same', activation='relu', name='conv')(inp)
x = keras.layers.MaxPooling2D(3, strides=2, padding='same', name='pool')(x)
x = keras.layers.Flatten(name='flat')(x)
a = keras.layers.Dense(4, activation='tanh', name='a')(x)
b = keras.layers.Dense(2, name='b')(a)
model = keras.Model(inp, [a, b], name='plain')
for io_type in ('io_parallel', 'io_stream'):
    hls_model = hls4ml.converters.convert_from_keras_model(
        model, output_dir=f'{OUT}/{io_type}', backend='Vitis', io_type=io_type,
        hls_config={'Model': {'Precision': 'ap_fixed<12,4>', 'ReuseFactor': 1, 'Strategy': 'Latency'}},
    )
    hls_model.write()
"""
WITH_HGQ_FIRST = """
import numpy as np, keras, hgq, hgq.convert
from hgq.layers import HConv2D, HDense, HMaxPooling2D, HQuantize
h = keras.Sequential([keras.Input((6, 6, 2)), HQuantize(), HConv2D(3, 3, padding='same', activation='relu'),
                      HMaxPooling2D(2, padding='same'), keras.layers.Flatten(), HDense(2)])
hgq.calibrate(h, np.random.default_rng(0).normal(size=(64, 6, 6, 2)).astype('float32'))
hgq.to_hls(h, OUT + '_hgq')
"""
# Lines that differ between any two conversions: the random stamp, and paths naming the output directory.
VOLATILE = re.compile(r'^.*(STAMP|Stamp|OutputDir|KerasModel).*$', re.MULTILINE)


def _project_texts(directory: Path) -> dict[str, str]:
    texts = {}
    for path in sorted(directory.rglob('*')):
        if path.is_file() and path.suffix != '.keras':
            texts[str(path.relative_to(directory))] = VOLATILE.sub('', path.read_text(errors='replace'))
    return texts


@pytest.mark.slow
def test_a_plain_hls4ml_model_converts_the_same_after_the_converter_was_used(tmp_path: Path) -> None:
    _python(f'OUT = {str(tmp_path / "without")!r}\n' + PLAIN_MODEL)
    _python(f'OUT = {str(tmp_path / "with")!r}\n' + WITH_HGQ_FIRST + PLAIN_MODEL)
    assert (tmp_path / 'with_hgq' / 'firmware' / 'nnet_utils' / 'hgq_lut.h').is_file()
    without, with_hgq = _project_texts(tmp_path / 'without'), _project_texts(tmp_path / 'with')
    assert sorted(without) == sorted(with_hgq)
    differ = [name for name in without if without[name] != with_hgq[name]]
    assert not differ, f'files that differ: {differ}'
