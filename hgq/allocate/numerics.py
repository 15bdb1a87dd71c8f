"""Stateless math of bit allocation: power-of-two formats, perturbations, Hutchinson traces, orthogonality, and the
multiple-choice integer program solved with ``scipy.optimize.milp`` (HiGHS).

Nothing here touches a Keras model; :mod:`hgq.allocate.core` does the model surgery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hgq.fixed_point import round_codes

__all__ = [
    'LayerOptions',
    'Allocation',
    'InfeasibleBudgetError',
    'weight_fractional_bits',
    'quantize_weights',
    'squared_error',
    'hutchinson_diagonal',
    'orthogonality_importance',
    'minimum_cost',
    'solve_allocation',
]


class InfeasibleBudgetError(ValueError):
    """No allocation meets the budget; ``minimum`` is the smallest feasible cost."""

    def __init__(self, message: str, minimum: float) -> None:
        super().__init__(message)
        self.minimum = float(minimum)


# -- power-of-two formats ------------------------------------------------------------------------------------------


def _group_max(w: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.max(np.abs(w), axis=axes, keepdims=True)


def quantize_weights(w: np.ndarray, bits: int, f: np.ndarray, round_mode: str = 'RND') -> np.ndarray:
    """Symmetric ``bits``-bit fixed point with ``f`` fractional bits: codes clipped to ``+-(2**(bits-1) - 1)``.

    ``bits=2`` is ternary (``{-1, 0, 1} * 2**-f``).

    Examples
    --------
    >>> quantize_weights(np.array([0.3, -0.9, 0.05]), 2, np.array(1)).tolist()
    [0.5, -0.5, 0.0]
    """
    limit = 2.0 ** (bits - 1) - 1 if bits > 1 else 1.0
    scale = 2.0 ** np.asarray(f, dtype=np.float64)
    codes = np.clip(round_codes(np.asarray(w, dtype=np.float64) * scale, round_mode, np), -limit, limit)
    return codes / scale


def weight_fractional_bits(
    w: np.ndarray, bits: int, axes: tuple[int, ...], scale: str = 'max', round_mode: str = 'RND'
) -> np.ndarray:
    """Fractional bits of a ``bits``-bit symmetric power-of-two format per group (dynamic fixed point).

    Parameters
    ----------
    w : array
        Weights.
    bits : int
        Total bits with sign; codes lie in ``+-(2**(bits-1) - 1)`` (``2``: ternary, ``1``: ``{-1, 0, 1}`` too).
    axes : tuple of int
        Axes reduced into one group (all axes: one format per tensor; all but the last: per channel).
    scale : {'max', 'mse'}
        ``'max'``: the finest format in which the largest weight of the group does not clip. ``'mse'``: the format
        (that one or up to three steps finer, with clipping) with the least squared error.
    round_mode : str
        Rounding mode of the quantizer.

    Returns
    -------
    array
        ``f`` with ``w``'s rank, size 1 along ``axes``.

    Examples
    --------
    >>> weight_fractional_bits(np.array([0.3, -0.9]), 4, (0,)).tolist()
    [2.0]
    """
    w = np.asarray(w, dtype=np.float64)
    limit = 2.0 ** (bits - 1) - 1 if bits > 1 else 1.0
    peak = np.maximum(_group_max(w, axes), 1e-30)
    f = np.floor(np.log2(limit / peak))  # peak * 2**f <= limit
    f = np.where(round_codes(peak * 2.0**f, round_mode, np) > limit, f - 1, f)
    if scale == 'max':
        return f
    if scale != 'mse':
        raise ValueError(f"scale must be 'max' or 'mse', got {scale!r}")
    candidates = [f + step for step in range(4)]
    errors = [np.sum((quantize_weights(w, bits, c, round_mode) - w) ** 2, axis=axes, keepdims=True) for c in candidates]
    return np.take_along_axis(np.stack(candidates), np.argmin(np.stack(errors), axis=0)[None], axis=0)[0]


def squared_error(w: np.ndarray, q: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``sum((q - w)**2)`` over ``axes`` (the quantization perturbation ``||Q(W) - W||^2`` per group)."""
    return np.sum((np.asarray(q, np.float64) - np.asarray(w, np.float64)) ** 2, axis=axes)


# -- sensitivity ---------------------------------------------------------------------------------------------------


def hutchinson_diagonal(
    hvp: Callable[[list[np.ndarray]], list[np.ndarray]],
    shapes: Sequence[tuple[int, ...]],
    n_probes: int = 32,
    seed: int = 0,
) -> list[np.ndarray]:
    """Hutchinson estimate of the Hessian diagonal, ``E[v * Hv]`` over Rademacher vectors ``v``.

    Summed over a tensor it estimates the trace ``Tr(H)`` (HAWQ's sensitivity).

    Parameters
    ----------
    hvp : callable
        Hessian-vector product: a list of arrays of ``shapes`` to the list ``H v``.
    shapes : sequence of tuple
        Shapes of the parameter tensors.
    n_probes : int
        Number of random vectors.
    seed : int
        Seed of the random vectors.

    Examples
    --------
    >>> h = np.diag([1.0, 2.0, 3.0])
    >>> hutchinson_diagonal(lambda v: [h @ v[0]], [(3,)], n_probes=4)[0].tolist()
    [1.0, 2.0, 3.0]
    """
    if n_probes < 1:
        raise ValueError(f'n_probes must be >= 1, got {n_probes}')
    rng = np.random.default_rng(seed)
    total = [np.zeros(s) for s in shapes]
    for _ in range(n_probes):
        v = [rng.choice((-1.0, 1.0), size=s) for s in shapes]
        for acc, vi, hv in zip(total, v, hvp(v), strict=True):
            acc += vi * np.asarray(hv, dtype=np.float64)
    return [t / n_probes for t in total]


def orthogonality_importance(features: Sequence[np.ndarray]) -> np.ndarray:
    """Layer importance from the orthogonality of layer features on one batch (OMPQ's proxy).

    For layer features ``X_l`` (batch x features) the normalized Gram matrix is ``G_l = X_l X_l^T / ||X_l X_l^T||``
    and the orthogonality between layers is ``<G_l, G_m>`` (1: the same information, 0: orthogonal). A layer whose
    features are more orthogonal to the other layers' adds more information, so its importance is
    ``1 - mean_m <G_l, G_m> + 1e-3``, normalized to sum to 1 (a single layer gets 1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(16, 4))
    >>> theta = orthogonality_importance([x, 2 * x, rng.normal(size=(16, 4))])
    >>> bool(theta[2] > theta[0])
    True
    """
    grams = []
    for x in features:
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        gram = x @ x.T
        norm = np.linalg.norm(gram)
        grams.append(gram / norm if norm > 0 else gram)
    n = len(grams)
    if n == 1:
        return np.ones(1)
    overlap = np.array([[np.sum(a * b) for b in grams] for a in grams])
    mean_other = (overlap.sum(axis=1) - np.diag(overlap)) / (n - 1)
    importance = 1.0 - mean_other + 1e-3
    return importance / importance.sum()


# -- the integer program -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerOptions:
    """The options of one layer: an activation choice ``a``, then one weight choice ``w`` per channel ``c``.

    Attributes
    ----------
    cost : array (A, C, W)
        Cost (EBOPs) of channel ``c`` with weight choice ``w`` when the layer input uses activation choice ``a``.
    weight_penalty : array (C, W)
        Penalty (loss increase or negative value) of weight choice ``w`` in channel ``c``.
    act_penalty : array (A,)
        Penalty of activation choice ``a``.
    name : str
        Layer name for messages.
    allowed : array of bool (A, C, W), optional
        Options that may be chosen (default: all).
    """

    cost: np.ndarray
    weight_penalty: np.ndarray
    act_penalty: np.ndarray
    name: str = ''
    allowed: np.ndarray | None = None

    def __post_init__(self) -> None:
        a, c, w = np.shape(self.cost)
        if self.allowed is not None and np.shape(self.allowed) != (a, c, w):
            raise ValueError(f'layer {self.name!r}: allowed {np.shape(self.allowed)} does not match cost {(a, c, w)}')
        if np.shape(self.weight_penalty) != (c, w) or np.shape(self.act_penalty) != (a,):
            raise ValueError(
                f'layer {self.name!r}: cost {np.shape(self.cost)}, weight_penalty {np.shape(self.weight_penalty)} '
                f'and act_penalty {np.shape(self.act_penalty)} do not match (A, C, W), (C, W), (A,)'
            )

    @property
    def allowed_cost(self) -> np.ndarray:
        """``cost`` with ``inf`` where an option is not allowed."""
        cost = np.asarray(self.cost, dtype=np.float64)
        return cost if self.allowed is None else np.where(self.allowed, cost, np.inf)

    @property
    def n_variables(self) -> int:
        a, c, w = self.cost.shape
        return a + a * c * w

    def cost_of(self, act: int, weights: np.ndarray) -> float:
        """Cost of one choice: activation index ``act`` and a weight index per channel."""
        return float(np.sum(self.cost[act, np.arange(len(weights)), weights]))

    def penalty_of(self, act: int, weights: np.ndarray) -> float:
        """Penalty of one choice."""
        return float(self.act_penalty[act] + np.sum(self.weight_penalty[np.arange(len(weights)), weights]))


@dataclass(frozen=True)
class Allocation:
    """The solution: per layer the activation choice and the weight choice of every channel."""

    acts: tuple[int, ...]
    weights: tuple[np.ndarray, ...]
    cost: float
    penalty: float


def minimum_cost(layers: Sequence[LayerOptions]) -> float:
    """Smallest total cost of any allocation (every layer at its cheapest allowed activation and channel choices).

    Raises ``ValueError`` naming a layer none of whose activation choices has an allowed option in every channel.
    """
    total = 0.0
    for opt in layers:
        best = float(np.min(np.sum(np.min(opt.allowed_cost, axis=2), axis=1)))
        if not np.isfinite(best):
            raise ValueError(f'layer {opt.name!r}: no allowed option (every choice is excluded)')
        total += best
    return total


def solve_allocation(layers: Sequence[LayerOptions], budget: float | None, time_limit: float = 60.0) -> Allocation:
    """Minimize the total penalty subject to ``total cost <= budget``, one choice per layer and channel.

    Variables are binary: ``y[l, a]`` (layer ``l`` uses activation choice ``a``) and ``z[l, a, c, w]`` (channel
    ``c`` uses weight choice ``w`` under activation choice ``a``), with ``sum_a y = 1`` and ``sum_w z[a, c] = y[a]``;
    the cost ``sum z * cost`` is then exact although it is a product of an activation and a weight choice. Solved
    to optimality (zero gap) with ``scipy.optimize.milp`` (HiGHS).

    Parameters
    ----------
    layers : sequence of LayerOptions
        The options of every layer.
    budget : float or None
        Upper bound on the total cost; ``None``: unconstrained.
    time_limit : float
        Seconds HiGHS may spend.

    Raises
    ------
    InfeasibleBudgetError
        When ``budget`` is below :func:`minimum_cost`.

    Examples
    --------
    >>> cost = np.array([[[1.0, 2.0, 4.0]]])  # one activation choice, one channel, three weight choices
    >>> opt = LayerOptions(cost, weight_penalty=np.array([[3.0, 1.0, 0.0]]), act_penalty=np.zeros(1))
    >>> solve_allocation([opt, opt], budget=5.0).weights
    (array([1]), array([1]))
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    if not layers:
        raise ValueError('no layers to allocate')
    floor = minimum_cost(layers)
    if budget is not None and budget < floor:
        raise InfeasibleBudgetError(
            f'budget {budget:.6g} EBOPs is below the minimum feasible {floor:.6g} EBOPs (every layer at its cheapest '
            'choice); raise the budget or allow fewer bits',
            floor,
        )
    objective, rows, cols, vals, lower, upper, var_upper = [], [], [], [], [], [], []
    cost_row: list[np.ndarray] = []
    offsets, start, n_rows = [], 0, 0

    def add_row(indices: np.ndarray, coefs: np.ndarray, lo: float, hi: float) -> None:
        nonlocal n_rows
        rows.extend([n_rows] * len(indices))
        cols.extend(indices.tolist())
        vals.extend(coefs.tolist())
        lower.append(lo)
        upper.append(hi)
        n_rows += 1

    for opt in layers:
        a, c, w = opt.cost.shape
        y = start + np.arange(a)
        z = start + a + np.arange(a * c * w).reshape(a, c, w)
        offsets.append((y, z))
        objective.append(np.asarray(opt.act_penalty, dtype=np.float64))
        objective.append(np.broadcast_to(opt.weight_penalty, (a, c, w)).reshape(-1))
        cost_row.append(np.zeros(a))
        cost_row.append(np.asarray(opt.cost, dtype=np.float64).reshape(-1))
        var_upper.append(np.ones(a))
        var_upper.append(np.ones(a * c * w) if opt.allowed is None else np.asarray(opt.allowed, float).reshape(-1))
        add_row(y, np.ones(a), 1.0, 1.0)
        for ai in range(a):
            for ci in range(c):
                add_row(np.append(z[ai, ci], y[ai]), np.append(np.ones(w), -1.0), 0.0, 0.0)
        start += opt.n_variables
    matrix = coo_array((vals, (rows, cols)), shape=(n_rows, start)).tocsr()
    constraints = [LinearConstraint(matrix, lower, upper)]
    if budget is not None:
        constraints.append(LinearConstraint(np.concatenate(cost_row)[None], -np.inf, budget))
    c_vec = np.concatenate(objective)
    result = milp(
        c_vec,
        integrality=np.ones(start),
        bounds=Bounds(0.0, np.concatenate(var_upper)),
        constraints=constraints,
        options={'time_limit': time_limit, 'mip_rel_gap': 0.0},
    )
    if result.x is None:
        raise RuntimeError(f'the allocation program found no solution: {result.message}')
    x = result.x
    acts, weights = [], []
    for y, z in offsets:
        act = int(np.argmax(x[y]))
        chosen = np.argmax(x[z[act]], axis=1)  # (C, W) -> the chosen weight option of every channel
        acts.append(act)
        weights.append(chosen.astype(np.int64))
    cost = sum(opt.cost_of(a, w) for opt, a, w in zip(layers, acts, weights, strict=True))
    penalty = sum(opt.penalty_of(a, w) for opt, a, w in zip(layers, acts, weights, strict=True))
    return Allocation(tuple(acts), tuple(weights), float(cost), float(penalty))
