"""Test session setup: thread pools sized per pytest-xdist worker, and the hypothesis profiles.

Hypothesis profiles of the property-based tests (tests/test_properties.py):

``ci`` (default): 150 derandomized examples per property, so every run checks the same cases; no example database
is written into the tree. ``mutation`` (``HYPOTHESIS_PROFILE=mutation``, set by scripts/mutation.sh): 25 examples,
enough to kill a wrong rounding or overflow rule while keeping each mutant's test run short.
"""

import os

from hypothesis import HealthCheck, settings


def _share_cores_between_workers() -> None:
    """Under pytest-xdist, size each worker's thread pools to its share of the cores.

    By default the compute thread pools of every worker's TensorFlow (intra-op) and PyTorch (OpenMP) hold one thread
    per core, so ``-n 2`` on 2 cores runs 4 busy threads that preempt each other. Set before either is imported
    (this file is loaded first); a value set by the caller is kept; child processes started by tests inherit it.
    TensorFlow's inter-op pool, which schedules ops rather than computing them, keeps its default size.
    """
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for name in ('TF_NUM_INTRAOP_THREADS', 'OMP_NUM_THREADS'):
        os.environ.setdefault(name, threads)


_share_cores_between_workers()

_COMMON = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('ci', max_examples=150, **_COMMON)
settings.register_profile('mutation', max_examples=25, **_COMMON)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))
