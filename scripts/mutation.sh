#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (pip install -e ".[dev]").
#
# Usage: scripts/mutation.sh [MODULE ...]       (default: all modules below; e.g. scripts/mutation.sh fixed_point ebops)
#
# Each module is mutated in its own scratch copy of the working tree ($MUTATION_DIR/<module>, default
# /tmp/hgq-mutation), so the repository never holds mutmut's `mutants/` folder.
# Only the test files listed for a module run against its mutants, without the tests marked `slow` (those compile
# C++ for every mutant). Results: the summary printed at the end, `$MUTATION_DIR/<module>/score.txt`, and
# `cd $MUTATION_DIR/<module> && mutmut show <mutant>` for the diff of a survivor.
#
# Environment: MUTANTS (mutmut name globs, e.g. 'hgq.quantizer.x*bits*': only those mutants), JOBS (parallel
# mutants, default 2), MUTATION_DIR, NICE (default 10), KEEP_MUTANTS=1 (reuse the
# verdicts of the previous run in the scratch copy instead of starting afresh).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
scratch=${MUTATION_DIR:-/tmp/hgq-mutation}
jobs=${JOBS:-2}
nice_level=${NICE:-10}

# module -> source files mutated | test files run against them
declare -A SOURCES=(
    [fixed_point]='hgq/fixed_point.py'
    [quantizer]='hgq/quantizer.py'
    [ebops]='hgq/ebops.py hgq/layers/kernel.py'
    [layers]='hgq/layers/*.py'
    [calibrate]='hgq/calibrate.py'
    [callbacks]='hgq/callbacks.py'
    [convert]='hgq/convert/kernels.py hgq/convert/tables.py hgq/convert/merging.py'
)
declare -A TESTS=(
    [fixed_point]='tests/test_fixed_point_oracle.py tests/test_fixed_point_edges.py tests/test_properties.py'
    [quantizer]='tests/test_quantizer.py tests/test_properties.py tests/test_tracking.py tests/test_ebops_exact.py'
    [ebops]='tests/test_ebops_exact.py tests/test_calibrate_contract.py'
    [layers]='tests/test_layers.py tests/test_layers_batchnorm.py tests/test_layers_bit_exact.py tests/test_activation.py tests/test_softmax.py tests/test_ebops_exact.py'
    [calibrate]='tests/test_layers.py tests/test_ebops_exact.py'
    [callbacks]='tests/test_callbacks.py tests/test_pareto_ties.py'
    [convert]='tests/test_convert.py tests/test_convert_bitexact.py'
)
ORDER=(fixed_point quantizer ebops calibrate callbacks layers convert)

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
for module in "${modules[@]}"; do
    if [ -z "${SOURCES[$module]+x}" ]; then
        echo "unknown module '$module'; expected one of: ${ORDER[*]}" >&2
        exit 2
    fi
done

command -v mutmut >/dev/null || { echo 'mutmut not found: pip install -e ".[dev]"' >&2; exit 2; }

config_list() {  # a setup.cfg list value: one item per indented line
    for item in "$@"; do printf '\n    %s' "$item"; done
}

run_module() {
    local module=$1 dir="$scratch/$1" start=$SECONDS
    # A fresh run unless KEEP_MUTANTS=1: mutmut keeps earlier verdicts when only the tests changed.
    [ "${KEEP_MUTANTS:-0}" = 1 ] || rm -rf "$dir/mutants"
    mkdir -p "$dir"
    # The current working tree (tracked and untracked, not ignored files), refreshed on each run.
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard) \
        | (cd "$repo" && xargs -0 tar -cf - --ignore-failed-read 2>/dev/null) | tar -xf - -C "$dir"
    local tests=() file
    for file in ${TESTS[$module]}; do [ -f "$dir/$file" ] && tests+=("$file"); done
    # shellcheck disable=SC2086
    cat >>"$dir/setup.cfg" <<CFG

[mutmut]
source_paths = hgq
only_mutate =$(config_list ${SOURCES[$module]})
pytest_add_cli_args_test_selection =$(config_list "${tests[@]}")
pytest_add_cli_args =$(config_list -n 0 -p no:cacheprovider -m 'not slow' -q)
# each mutant forked from a server that imported the tests (collect) but ran no TensorFlow op: a child forked
# after TensorFlow ran an op (mutmut's default forks from the process that ran the tests) waits forever on the
# op thread pool it lacks, and is then counted as a timeout, i.e. caught
process_isolation = forkserver
forkserver_warmup = collect
# generous: the machine is shared, and a mutant that only runs slowly must not count as caught
timeout_multiplier = 40.0
timeout_constant = 20.0
CFG
    echo "== $module: mutating ${SOURCES[$module]} against ${tests[*]}"
    # shellcheck disable=SC2086
    (cd "$dir" && HYPOTHESIS_PROFILE=mutation nice -n "$nice_level" mutmut run --max-children "$jobs" ${MUTANTS:-} \
        >run.log 2>&1) || true
    (cd "$dir" && mutmut results --all true >results.txt 2>&1) || (cd "$dir" && mutmut results >results.txt 2>&1) || true
    python - "$dir" "$module" "$((SECONDS - start))" <<'PY'
import re, sys
from pathlib import Path

directory, module, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
statuses = {}
for line in (directory / 'results.txt').read_text().splitlines():
    match = re.match(r'\s*(\S+): (.+)$', line)
    if match and '__mutmut_' in match.group(1):
        statuses[match.group(1)] = match.group(2).strip()
counts = {}
for status in statuses.values():
    counts[status] = counts.get(status, 0) + 1
killed = counts.get('killed', 0) + counts.get('timeout', 0)
judged = killed + counts.get('survived', 0)
score = 100.0 * killed / judged if judged else float('nan')
summary = f'{module}: {killed}/{judged} killed ({score:.1f}%), {seconds} s; ' + ', '.join(
    f'{k} {v}' for k, v in sorted(counts.items())
)
survivors = sorted(name for name, status in statuses.items() if status == 'survived')
(directory / 'score.txt').write_text(summary + '\n' + ''.join(f'  survived: {s}\n' for s in survivors))
print((directory / 'score.txt').read_text(), end='')
PY
}

for module in "${modules[@]}"; do
    run_module "$module"
done
