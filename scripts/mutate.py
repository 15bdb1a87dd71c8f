"""Mutation testing of the HGQ core: one AST mutation at a time, judged by the tests that run the mutated line.

Why not mutmut: mutmut 3 routes every function of a mutated file through a trampoline, constructors included, and
Keras reads the signature of a layer's constructor, so every test of a file holding a layer fails before any mutant
is applied. This driver changes one node of the module's syntax tree per mutant and leaves all else untouched.

Steps (``python scripts/mutate.py MODULE ...``, see scripts/MUTATION.md):

1. **Coverage map.** The module's test files run once under coverage.py with one context per test, which gives for
   every source line the tests that execute it, and each test's duration.
2. **Mutants.** For each source file: arithmetic operator swaps (``+``/``-``, ``*``/``/``, ...), comparison
   boundary flips (``<``/``<=``, ``==``/``!=``, ``is``/``is not``, ``in``/``not in``), ``and``/``or``, a dropped
   unary ``-`` or ``not``, numbers ``+1``, ``True``/``False``, identifier-like strings (``'WRAP'`` ->
   ``'XXWRAPXX'``), ``return x`` -> ``return None``, and calls of ``max``/``min``, ``maximum``/``minimum``,
   ``floor``/``ceil``, ``any``/``all`` swapped. Left alone: docstrings, annotations, f-strings and messages
   (strings with spaces), ``__all__``, ``stacklevel=`` values.
3. **Runs.** A parent process imports TensorFlow, Keras and pytest once and forks a child per mutant; the child
   serves the mutated source for the one module through an import hook and runs, with ``pytest -x``, only the tests
   that executed a line of the mutated node (fastest first). A mutant that fails a test is *killed*, one that uses
   more CPU time than its limit (30 s + 4 times the tests' own time) is *timeout*, one that passes is *survived*,
   one on a line that no test runs is *uncovered* (counted as surviving). Code run only at import is judged
   through proxy lines: default arguments by the tests that run the function's body, module constants by those
   that run a line using the name, class decorators by those that run the class's ``get_config``; by every test
   of the module where that finds none.

Results go to ``OUT/<module>.jsonl`` (one line per mutant; a rerun skips mutants already judged unless
``--fresh``); ``--show ID`` prints a mutant's diff; ``--summary`` prints the score table, with the mutants listed
in ``scripts/equivalent_mutants.txt`` excluded. For a machine short of CPU: ``--carry`` keeps the kills of an earlier
commit on lines that read the same, ``--also`` adds whole test files written since the coverage map, ``--shuffle``
and ``--max-tests`` trade completeness for time (scripts/MUTATION.md).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.abc
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# module -> (source files mutated, test files judging them). Only tests not marked `slow` run.
MODULES: dict[str, tuple[list[str], list[str]]] = {
    'ebops': (['hgq/ebops.py'], ['tests/test_ebops_exact.py', 'tests/test_mutation_kills.py']),
    'calibrate': (['hgq/calibrate.py'], ['tests/test_calibrate_contract.py', 'tests/test_mutation_kills.py']),
    'quantizer': (
        ['hgq/quantizer.py'],
        [
            'tests/test_quantizer.py',
            'tests/test_tracking.py',
            'tests/test_ebops_exact.py',
            'tests/test_properties.py',
            'tests/test_mutation_kills.py',
        ],
    ),
    'layers': (
        [
            'hgq/layers/base.py',
            'hgq/layers/kernel.py',
            'hgq/layers/dense.py',
            'hgq/layers/conv.py',
            'hgq/layers/quantize.py',
            'hgq/layers/merge.py',
            'hgq/layers/pooling.py',
            'hgq/layers/activation.py',
            'hgq/layers/softmax.py',
            'hgq/layers/batchnorm.py',
        ],
        [
            'tests/test_layers.py',
            'tests/test_layers_batchnorm.py',
            'tests/test_layers_bit_exact.py',
            'tests/test_activation.py',
            'tests/test_softmax.py',
            'tests/test_ebops_exact.py',
            'tests/test_mutation_kills.py',
            'tests/test_mutation_kills_layers.py',
        ],
    ),
    'exactness': (
        ['hgq/exactness.py'],
        [
            'tests/test_hardening.py',
            'tests/test_calibrate_contract.py',
            'tests/test_mutation_kills.py',
            'tests/test_mutation_kills_layers.py',
        ],
    ),
    'callbacks': (
        ['hgq/callbacks.py'],
        [
            'tests/test_callbacks.py',
            'tests/test_pareto_ties.py',
            'tests/test_front_mechanisms.py',
            'tests/test_mutation_kills.py',
            'tests/test_mutation_kills_layers.py',
        ],
    ),
    # the converter's precision passes; tests/test_convert_precisions.py judges every type without a C++ build
    'convert': (['hgq/convert/hls_backend.py'], ['tests/test_convert_precisions.py', 'tests/test_convert.py']),
}
# A child is stopped once its CPU time exceeds 30 s + 4 times the wall time its tests took in the coverage run (CPU
# time, not wall time: on a loaded machine a starved child must not count as caught), or after WALL_LIMIT seconds.
WALL_LIMIT = 3600.0
PYTEST_ARGS = ['-o', 'addopts=', '-p', 'no:cacheprovider', '-p', 'no:xdist', '-m', 'not slow', '-q', '-x']
EQUIVALENT_FILE = REPO / 'scripts' / 'equivalent_mutants.txt'

BINARY_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitAnd,
}
COMPARE_SWAPS = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
CALL_SWAPS = {
    'max': 'min',
    'min': 'max',
    'maximum': 'minimum',
    'minimum': 'maximum',
    'floor': 'ceil',
    'ceil': 'floor',
    'any': 'all',
    'all': 'any',
}


# ---------------------------------------------------------------------------------------------------------- mutants
@dataclass(frozen=True)
class Mutant:
    file: str  # path relative to the repository
    index: int  # position among the file's mutation sites, in tree order
    line: int
    col: int
    label: str

    @property
    def id(self) -> str:
        return f'{self.file}:{self.line}:{self.col}:{self.label}'


def _site_mutations(node: ast.AST) -> list[tuple[str, object]]:
    """(label, replacement) for each mutation of ``node`` itself; a replacement is a node or a callable on a copy."""
    out: list[tuple[str, object]] = []
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in BINARY_SWAPS:
        new = BINARY_SWAPS[type(node.op)]
        out.append((f'{type(node.op).__name__}->{new.__name__}', lambda n, new=new: setattr(n, 'op', new())))
    elif isinstance(node, ast.Compare):
        for j, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                new = COMPARE_SWAPS[type(op)]
                label = f'{type(op).__name__}->{new.__name__}'
                out.append((label, lambda n, j=j, new=new: n.ops.__setitem__(j, new())))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((f'{type(node.op).__name__}->{new.__name__}', lambda n, new=new: setattr(n, 'op', new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not | ast.Invert):
        out.append((f'drop-{type(node.op).__name__}', 'operand'))
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            out.append((f'{value}->{not value}', lambda n: setattr(n, 'value', not n.value)))
        elif isinstance(value, int | float):
            out.append((f'{value!r}->{value + 1!r}', lambda n: setattr(n, 'value', n.value + 1)))
        elif isinstance(value, str) and value and ' ' not in value and len(value) <= 40:
            out.append((f'str-{value}', lambda n: setattr(n, 'value', f'XX{n.value}XX')))
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            out.append(('return-None', lambda n: setattr(n, 'value', ast.Constant(None))))
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name in CALL_SWAPS:
            new_name = CALL_SWAPS[name]
            field = 'attr' if isinstance(func, ast.Attribute) else 'id'
            out.append((f'{name}->{new_name}', lambda n, f=field, v=new_name: setattr(n.func, f, v)))
    return out


def _skipped_children(node: ast.AST) -> set[int]:
    """Ids of child nodes that are never mutated: docstrings, annotations, f-strings, `__all__`, stacklevel."""
    skip: list[ast.AST | None] = []
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            skip.append(first)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        skip.append(node.returns)
        skip.extend(a.annotation for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs])
        skip.extend(a.annotation for a in [node.args.vararg, node.args.kwarg] if a is not None)
    if isinstance(node, ast.AnnAssign):
        skip.append(node.annotation)
    if isinstance(node, ast.arg):
        skip.append(node.annotation)
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '__all__' for t in node.targets):
        skip.extend(node.targets + [node.value])
    if isinstance(node, ast.keyword) and node.arg == 'stacklevel':
        skip.append(node.value)
    if isinstance(node, ast.JoinedStr):
        skip.extend(node.values)
    return {id(n) for n in skip if n is not None}


def _walk_sites(tree: ast.AST):
    """Yield (node, parent, field, position, mutations) in a fixed pre-order, skipping what is never mutated."""

    def visit(node, parent, field, pos):
        if isinstance(node, ast.JoinedStr):
            return
        yield node, parent, field, pos, _site_mutations(node)
        skipped = _skipped_children(node)
        for name, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for j, child in enumerate(children):
                if isinstance(child, ast.AST) and id(child) not in skipped:
                    yield from visit(child, node, name, j if isinstance(value, list) else None)

    yield from visit(tree, None, None, None)


def list_mutants(file: str) -> list[Mutant]:
    tree = ast.parse((REPO_TREE / file).read_text())
    mutants: list[Mutant] = []
    seen: dict[tuple[int, int, str], int] = {}
    for node, _parent, _field, _pos, mutations in _walk_sites(tree):
        for label, _ in mutations:
            key = (node.lineno, node.col_offset, label)
            seen[key] = seen.get(key, 0) + 1
            label = label if seen[key] == 1 else f'{label}#{seen[key]}'  # same operator twice in one expression
            mutants.append(Mutant(file, len(mutants), node.lineno, node.col_offset, label))
    return mutants


def mutated_source(mutant: Mutant) -> str:
    tree = ast.parse((REPO_TREE / mutant.file).read_text())
    count = 0
    for node, parent, field, pos, mutations in _walk_sites(tree):
        for _label, change in mutations:
            if count == mutant.index:
                if change == 'operand':
                    replacement = node.operand
                    if pos is None:
                        setattr(parent, field, replacement)
                    else:
                        getattr(parent, field)[pos] = replacement
                else:
                    change(node)
                return ast.unparse(ast.fix_missing_locations(tree)) + '\n'
            count += 1
    raise IndexError(f'{mutant.id}: no such mutation site')


def mutant_diff(mutant: Mutant) -> str:
    original = ast.unparse(ast.parse((REPO_TREE / mutant.file).read_text())).splitlines()
    changed = mutated_source(mutant).splitlines()
    return '\n'.join(difflib.unified_diff(original, changed, mutant.file, mutant.id, n=1, lineterm=''))


def _node_lines(file: str) -> dict[int, tuple]:
    """Mutant index -> (first line, last line, proxy lines, span of the outermost enclosing function).

    Proxy lines stand for code that runs at import, where coverage cannot tell which test needs it: a default
    argument is judged by the tests that run the function's body, a module constant by those that run a line using
    its name, a class decorator by those that run the class's ``get_config``.
    """
    tree = ast.parse((REPO_TREE / file).read_text())
    proxies: dict[int, list[int]] = {}

    def mark(root: ast.AST, lines: list[int]) -> None:
        for sub in ast.walk(root):
            proxies[id(sub)] = lines

    uses: dict[str, list[ast.Name]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            uses.setdefault(node.id, []).append(node)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            body_line = fn.body[0].lineno if len(fn.body) == 1 else fn.body[1].lineno
            for default in [*fn.args.defaults, *[d for d in fn.args.kw_defaults if d is not None]]:
                mark(default, [body_line])
        if isinstance(fn, ast.ClassDef):
            configs = [m.body[-1].lineno for m in fn.body if isinstance(m, ast.FunctionDef) and 'config' in m.name]
            for decorator in fn.decorator_list:
                mark(decorator, configs)
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            lines = [proxies.get(id(use), [use.lineno]) for name in names for use in uses.get(name, [])]
            mark(stmt.value, [line for group in lines for line in group if line != stmt.lineno])
    # The outermost function around each node: lines that coverage cannot see (code that TensorFlow's autograph
    # rewrites inside a tf.function) are judged by the tests that run the rest of that function.
    outer: dict[int, tuple[int, int]] = {}
    for top in ast.walk(tree):
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(top):
                outer.setdefault(id(sub), (top.body[0].lineno, top.end_lineno or top.lineno))
    spans: dict[int, tuple[int, int, list[int] | None, tuple[int, int] | None]] = {}
    count = 0
    for node, _parent, _field, _pos, mutations in _walk_sites(tree):
        for _ in mutations:
            end = node.end_lineno if not isinstance(node, ast.Return) else node.lineno
            spans[count] = (node.lineno, end or node.lineno, proxies.get(id(node)), outer.get(id(node)))
            count += 1
    return spans


# --------------------------------------------------------------------------------------------------- coverage map
COVERAGE_PLUGIN = """
import json, os, time
import coverage
import pytest

_durations = {}

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(item.nodeid)
    start = time.perf_counter()
    yield
    _durations[item.nodeid] = time.perf_counter() - start
    if cov is not None:
        cov.switch_context('')

def pytest_sessionfinish(session, exitstatus):
    with open(os.environ['MUTATE_DURATIONS'], 'w') as fh:
        json.dump({'durations': _durations, 'exitstatus': int(exitstatus)}, fh)
"""


def coverage_map(module: str, out: Path) -> dict:
    """Run the module's tests once under coverage; map each source line to the tests that execute it."""
    sources, tests = MODULES[module]
    cache = out / f'{module}.coverage.json'
    if cache.exists():
        return json.loads(cache.read_text())
    work = out / f'{module}.cov'
    work.mkdir(parents=True, exist_ok=True)
    (work / 'mutate_coverage_plugin.py').write_text(COVERAGE_PLUGIN)
    rc = work / 'coveragerc'
    include = ','.join(str(REPO_TREE / s) for s in sources)
    rc.write_text(f'[run]\ndata_file = {work / "data"}\ninclude = {include}\n')
    env = dict(
        os.environ,
        MUTATE_DURATIONS=str(work / 'durations.json'),
        PYTHONPATH=f'{work}:{REPO_TREE}',
        HYPOTHESIS_PROFILE='mutation',
    )
    tests = [t for t in tests if (REPO_TREE / t).exists()]
    cmd = [
        sys.executable,
        '-m',
        'coverage',
        'run',
        f'--rcfile={rc}',
        '-m',
        'pytest',
        *PYTEST_ARGS[:-1],
        '-p',
        'mutate_coverage_plugin',
        *tests,
    ]
    print(f'[{module}] coverage map: {" ".join(tests)}', flush=True)
    start = time.time()
    with open(work / 'pytest.log', 'w') as log:
        subprocess.run(cmd, cwd=REPO_TREE, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    info = json.loads((work / 'durations.json').read_text())
    if info['exitstatus'] != 0:
        sys.exit(f'[{module}] the unmutated tests fail (exit {info["exitstatus"]}); see {work / "pytest.log"}')
    import coverage

    data = coverage.CoverageData(basename=str(work / 'data'))
    data.read()
    lines: dict[str, dict[str, list[str]]] = {}
    for source in sources:
        by_line = data.contexts_by_lineno(str(REPO_TREE / source))
        lines[source] = {str(n): sorted(c for c in ctx if c) for n, ctx in by_line.items()}
    result = {'durations': info['durations'], 'lines': lines, 'seconds': time.time() - start}
    cache.write_text(json.dumps(result))
    print(f'[{module}] coverage map: {len(info["durations"])} tests, {result["seconds"]:.0f} s', flush=True)
    return result


# ------------------------------------------------------------------------------------------------------------ runs
class _MutatedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the mutated source for one module name; every other import goes its usual way."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(compile(self.source, str(self.path), 'exec'), module.__dict__)


def _run_child(mutant: Mutant | None, tests: list[str], log_path: Path) -> None:
    """In the forked child: install the mutated module (none: the tree as it is), run the tests, exit with pytest's
    status."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        name = mutant.file[:-3].replace('/', '.') if mutant else ''
        if mutant:
            sys.meta_path.insert(0, _MutatedModule(name, REPO_TREE / mutant.file, mutated_source(mutant)))
        import pytest

        code = int(pytest.main([*PYTEST_ARGS, *tests]))
        if code == 4 and mutant:  # no test collected: the mutated module may fail to import (a type alias at import)
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - any import failure kills the mutant
                print(f'the mutated module does not import: {err!r}', flush=True)
                code = 1
    except BaseException as err:  # noqa: BLE001 - any failure of the child is reported through its exit status
        print(f'mutation driver error: {err!r}', flush=True)
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a child has used so far; its last value once it has exited."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _unmutated_seconds(files: list[str], logs: Path) -> dict[str, float]:
    """CPU seconds of each whole test file on the unmutated tree, run as a mutant's child runs it.

    The time limit of a mutant counts them, so that a mutant surviving its covering tests is not stopped inside
    these files and recorded as caught. A file failing here is an error: it would mark every mutant killed.
    """
    seconds = {}
    for file in files:
        log_path = logs / f'unmutated-{Path(file).stem}.log'
        pid = os.fork()
        if pid == 0:
            _run_child(None, [file], log_path)
        used = 0.0
        while True:
            used = _cpu_seconds(pid) or used
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
            time.sleep(0.2)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f'{file} fails on the unmutated tree ({log_path}): it would kill every mutant')
        seconds[file] = used
        print(f'{file}: {used:.1f} CPU s on the unmutated tree', flush=True)
    return seconds


def _verdict(code: int | None) -> str:
    if code is None:
        return 'timeout'
    if code == 0:
        return 'survived'
    if code in (1, 2):  # a failing test, or an import of the mutated module failing during collection
        return 'killed'
    return f'error{code}'


def _select_tests(mutant: Mutant, span, cov: dict) -> tuple[list[str], str]:
    if 'rejudge' in cov:
        return cov['rejudge'], 'rejudge'
    lines = cov['lines'][mutant.file]
    first, last, proxy_lines, function = span
    wanted = proxy_lines if proxy_lines else range(first, last + 1)
    tests: set[str] = set()
    executed = False
    for n in wanted:
        if str(n) in lines:
            executed = True
            tests.update(lines[str(n)])
    if tests:
        return sorted(tests, key=lambda t: cov['durations'].get(t, 1e9)), 'covered'
    if executed or str(first) in lines:  # executed only at import: every test of the module judges it
        return sorted(cov['durations'], key=cov['durations'].get), 'import'
    if function:
        for n in range(function[0], function[1] + 1):
            tests.update(lines.get(str(n), []))
        if tests:
            return sorted(tests, key=lambda t: cov['durations'].get(t, 1e9)), 'function'
    return [], 'uncovered'


def _latest(results_path: Path) -> dict[str, dict]:
    """Mutant id -> its latest verdict (a rejudged mutant has several lines; the last one counts)."""
    entries: dict[str, dict] = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                entries[entry['id']] = entry
    return entries


def run_module(
    module: str,
    out: Path,
    jobs: int,
    fresh: bool,
    only: str | None,
    rejudge: list[str] | None = None,
    shuffle: int | None = None,
    max_tests: int | None = None,
    also: list[str] | None = None,
) -> None:
    results_path = out / f'{module}.jsonl'
    if fresh and results_path.exists():
        results_path.unlink()
    latest = _latest(results_path)
    if rejudge:  # the survivors again, against whole test files (new tests), without a coverage map
        equivalent = equivalent_ids()
        alive = {i for i, e in latest.items() if e['status'] in ('survived', 'uncovered') and i not in equivalent}
        done = {i for i in set(latest) | {m.id for f in MODULES[module][0] for m in list_mutants(f)} if i not in alive}
        durations = {t: 30.0 for t in rejudge}
        cov = {'durations': durations, 'lines': {f: {} for f in MODULES[module][0]}, 'rejudge': rejudge}
    else:  # judged mutants are kept; uncovered ones are looked at again (the selection of tests may have grown)
        done = {i for i, e in latest.items() if e['status'] != 'uncovered'}
        cov = coverage_map(module, out)
    logs = out / f'{module}.logs'
    logs.mkdir(exist_ok=True)
    queue = []
    for file in MODULES[module][0]:
        spans = _node_lines(file)
        for mutant in list_mutants(file):
            if mutant.id not in done and (only is None or only in mutant.id):
                queue.append((mutant, spans[mutant.index]))
    if shuffle is not None:  # a run stopped early has then judged a uniform sample of the mutants
        random.Random(shuffle).shuffle(queue)
    print(f'[{module}] {len(queue)} mutants to judge ({len(done)} judged before)', flush=True)
    also_seconds = _unmutated_seconds(also, logs) if also and queue else {}
    running: dict[int, tuple[Mutant, float, float, str, int]] = {}
    judged = 0

    def record(mutant: Mutant, status: str, seconds: float, how: str, n_tests: int) -> None:
        nonlocal judged
        judged += 1
        entry = dict(
            id=mutant.id,
            file=mutant.file,
            line=mutant.line,
            label=mutant.label,
            status=status,
            seconds=round(seconds, 1),
            selection=how,
            tests=n_tests,
        )
        with open(results_path, 'a') as fh:
            fh.write(json.dumps(entry) + '\n')
        if status != 'killed':
            print(f'[{module}] {judged}/{len(queue)} {status}: {mutant.id}', flush=True)
        elif judged % 25 == 0:
            print(f'[{module}] {judged}/{len(queue)} judged', flush=True)

    pending = list(queue)
    while pending or running:
        while pending and len(running) < jobs:
            mutant, span = pending.pop(0)
            tests, how = _select_tests(mutant, span, cov)
            tests = tests[:max_tests] if max_tests else tests
            if also:  # whole files after the covering tests (which are the fastest and kill most mutants)
                tests = [*(t for t in tests if t.split('::')[0] not in also), *also]
            if not tests:
                record(mutant, 'uncovered', 0.0, how, 0)
                continue
            limit = 30.0 + 4.0 * sum(cov['durations'].get(t, also_seconds.get(t, 5.0)) for t in tests)
            log_path = logs / f'{mutant.index}.log'
            pid = os.fork()
            if pid == 0:
                _run_child(mutant, tests, log_path)
            running[pid] = (mutant, time.time(), limit, how, len(tests))
        time.sleep(0.2)
        for pid, (mutant, start, limit, how, n_tests) in list(running.items()):
            used = _cpu_seconds(pid)
            finished, status = os.waitpid(pid, os.WNOHANG)
            if finished:
                del running[pid]
                record(mutant, _verdict(os.waitstatus_to_exitcode(status)), used, how, n_tests)
            elif used > limit or time.time() - start > WALL_LIMIT:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del running[pid]
                record(mutant, 'timeout', used, how, n_tests)


# ----------------------------------------------------------------------------------------------------------- carry
def carry(module: str, out: Path, old_out: Path, old_commit: str) -> None:
    """Copy the kills judged at ``old_commit`` (``old_out``) onto the same mutants of the current tree.

    A mutant is the same when its line reads the same, character for character, at both commits (same column and
    mutation): an incremental run for a machine short of CPU. Survivors are never carried: they are judged anew.
    Carried entries say so (``carried``), and the summary counts them apart.
    """
    results_path = out / f'{module}.jsonl'
    judged = _latest(results_path)
    old = _latest(old_out / f'{module}.jsonl')
    added = 0
    for file in MODULES[module][0]:
        old_text = subprocess.run(
            ['git', 'show', f'{old_commit}:{file}'], cwd=REPO_TREE, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        new_text = (REPO_TREE / file).read_text().splitlines()
        by_text: dict[tuple[str, int, str], list[dict]] = {}
        for entry in old.values():
            if entry['file'] == file and entry['status'] in ('killed', 'timeout'):
                _, _, col, label = entry['id'].split(':', 3)
                by_text.setdefault((old_text[entry['line'] - 1], int(col), label), []).append(entry)
        with open(results_path, 'a') as fh:
            for mutant in list_mutants(file):
                if mutant.id in judged:
                    continue
                text = new_text[mutant.line - 1]
                if old_text.count(text) != 1 or new_text.count(text) != 1:  # the line must be unique at both commits
                    continue
                matches = by_text.get((text, mutant.col, mutant.label), [])
                if len(matches) == 1:
                    entry = dict(matches[0], id=mutant.id, line=mutant.line, carried=old_commit)
                    fh.write(json.dumps(entry) + '\n')
                    added += 1
    print(f'[{module}] {added} kills carried from {old_commit}', flush=True)


# --------------------------------------------------------------------------------------------------------- summary
def equivalent_ids() -> dict[str, str]:
    """Mutant id -> reason, from scripts/equivalent_mutants.txt (``id  reason`` lines, ``#`` comments)."""
    found = {}
    if EQUIVALENT_FILE.exists():
        for line in EQUIVALENT_FILE.read_text().splitlines():
            if line.strip() and not line.startswith('#'):
                mutant_id, _, reason = line.partition(' ')
                found[mutant_id] = reason.strip()
    return found


def summary(out: Path, modules: list[str]) -> None:
    equivalent = equivalent_ids()
    print('| module | mutants judged | equivalent | killed | timeout | survived | uncovered | score | kills carried |')
    print('|---|---|---|---|---|---|---|---|---|')
    for module in modules:
        path = out / f'{module}.jsonl'
        if not path.exists():
            continue
        current = {m.id for f in MODULES[module][0] for m in list_mutants(f)}
        entries = {i: e for i, e in _latest(path).items() if i in current}
        counts = {'killed': 0, 'timeout': 0, 'survived': 0, 'uncovered': 0, 'equivalent': 0}
        alive = []
        carried = sum(1 for e in entries.values() if e.get('carried') and e['id'] not in equivalent)
        for entry in entries.values():
            status = 'equivalent' if entry['id'] in equivalent else entry['status']
            counts[status] = counts.get(status, 0) + 1
            if status in ('survived', 'uncovered') or status.startswith('error'):
                alive.append(f'{entry["id"]} ({status})')
        caught = counts['killed'] + counts['timeout']
        scored = len(entries) - counts['equivalent']
        score = 100.0 * caught / scored if scored else float('nan')
        print(
            f'| `{module}` | {len(entries)} of {len(current)} | {counts["equivalent"]} | {counts["killed"]} | '
            f'{counts["timeout"]} | {counts["survived"]} | {counts["uncovered"]} | {score:.1f}% | {carried} |'
        )
        for name in alive:
            print(f'    alive: {name}', file=sys.stderr)


def main() -> None:
    global REPO_TREE
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('modules', nargs='*', default=[], help=f'some of {", ".join(MODULES)} (default: all)')
    parser.add_argument('--tree', type=Path, default=REPO, help='source tree to mutate (default: this repository)')
    parser.add_argument('--out', type=Path, default=Path('/tmp/hgq-mutate'), help='results folder')
    parser.add_argument('--jobs', type=int, default=2, help='mutants judged at once')
    parser.add_argument('--fresh', action='store_true', help='judge every mutant again')
    parser.add_argument('--only', help='judge only mutants whose id contains this text')
    parser.add_argument(
        '--rejudge',
        nargs='+',
        metavar='TEST_FILE',
        help='judge the surviving and uncovered mutants again with these whole test files',
    )
    parser.add_argument('--shuffle', type=int, metavar='SEED', help='judge the mutants in a random order')
    parser.add_argument(
        '--max-tests',
        type=int,
        metavar='N',
        help='run at most the N fastest covering tests per mutant (fewer kills, never more)',
    )
    parser.add_argument(
        '--also',
        nargs='+',
        metavar='TEST_FILE',
        default=[],
        help='whole test files run for every mutant after its covering tests',
    )
    parser.add_argument(
        '--carry',
        nargs=2,
        metavar=('OLD_OUT', 'OLD_COMMIT'),
        help='copy kills judged at OLD_COMMIT (results in OLD_OUT) onto mutants of unchanged lines',
    )
    parser.add_argument('--list', action='store_true', help='list the mutants and stop')
    parser.add_argument('--show', metavar='ID', help='print the diff of one mutant')
    parser.add_argument('--summary', action='store_true', help='print the score table of earlier runs')
    args = parser.parse_args()
    REPO_TREE = args.tree.resolve()
    modules = args.modules or list(MODULES)
    for module in modules:
        if module not in MODULES:
            parser.error(f'unknown module {module!r}; expected one of {", ".join(MODULES)}')
    if args.show:
        file = args.show.split(':')[0]
        matches = [m for m in list_mutants(file) if m.id == args.show]
        if not matches:
            sys.exit(f'no mutant {args.show!r}; --list shows the ids')
        print(mutant_diff(matches[0]))
        return
    if args.list:
        for module in modules:
            for file in MODULES[module][0]:
                for mutant in list_mutants(file):
                    print(mutant.id)
        return
    if args.summary:
        summary(args.out, modules)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO_TREE))
    os.chdir(REPO_TREE)
    os.environ.setdefault('HYPOTHESIS_PROFILE', 'mutation')
    import keras  # noqa: F401  - loaded once here, shared by every forked child
    import numpy  # noqa: F401
    import pytest  # noqa: F401

    if args.carry:
        for module in modules:
            carry(module, args.out, Path(args.carry[0]), args.carry[1])
    for module in modules:
        run_module(
            module, args.out, args.jobs, args.fresh, args.only, args.rejudge, args.shuffle, args.max_tests, args.also
        )
    summary(args.out, modules)


REPO_TREE = REPO

if __name__ == '__main__':
    main()
