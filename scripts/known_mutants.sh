#!/usr/bin/env bash
# Four plausible bugs that the suite once missed, each applied to a scratch copy of the working tree
# ($MUTATION_DIR/known, default /tmp/hgq-mutation/known); the tests that pin the behaviour must fail on every one.
# Prints one "<bug>: N failed" line per bug (pip install -e ".[test]"; about 2 min).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
base=${MUTATION_DIR:-/tmp/hgq-mutation}/known
run() {  # name file python-old python-new tests...
    local name=$1 file=$2 old=$3 new=$4; shift 4
    local dir=$base/$name
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$dir"
    python3 - "$dir/$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
s = open(path).read()
assert s.count(old) == 1, (path, old)
open(path, 'w').write(s.replace(old, new))
PY
    (cd "$dir" && python -c "import hgq, sys; assert hgq.__file__.startswith('$dir'), hgq.__file__" && \
        nice -n 5 python -m pytest "$@" -x -q -p no:cacheprovider -n 0 2>&1 | tail -1 | sed "s/^/$name: /")
}
run weight_bits_off_by_one hgq/quantizer.py 'msb + 1.0 + self.f_int' 'msb + self.f_int' tests/test_ebops_exact.py -k 'per_weight or dense-element'
run dropped_ebops_scale hgq/layers/kernel.py 'self.kernel_quantizer.bits(kernel))) * self.ebops_scale()' 'self.kernel_quantizer.bits(kernel)))' tests/test_ebops_exact.py -k 'conv1d_valid'
run momentum_inverted hgq/quantizer.py 'm * self.vmax + (1 - m) * batch_max' '(1 - m) * self.vmax + m * batch_max' tests/test_tracking.py
run pareto_ties hgq/callbacks.py "return a >= b if side == 'max' else a <= b" "return a > b if side == 'max' else a <= b" tests/test_pareto_ties.py
