"""Bit allocation without learning bits: HAWQ-V3 (Hessian-weighted integer program), OMPQ (orthogonality proxy)
and cluster dynamic fixed point, under an exact EBOPs budget.

Examples
--------
>>> import hgq
>>> hgq.allocate.METHODS
('hawq_v3', 'ompq', 'cluster')
"""

from hgq.allocate.core import METHODS, InfeasibleBudgetError, allocate

__all__ = ['METHODS', 'InfeasibleBudgetError', 'allocate']
