"""Hypothesis profiles of the property-based tests (tests/test_properties.py).

``ci`` (default): 150 derandomized examples per property, so every run checks the same cases; no example database
is written into the tree. ``mutation`` (``HYPOTHESIS_PROFILE=mutation``, set by scripts/mutation.sh): 25 examples,
enough to kill a wrong rounding or overflow rule while keeping each mutant's test run short.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('ci', max_examples=150, **_COMMON)
settings.register_profile('mutation', max_examples=25, **_COMMON)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))
