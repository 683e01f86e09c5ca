"""Explicit Runge–Kutta methods as data.

A :class:`ButcherTableau` checks itself when it is built: the row-sum
condition, the classical order conditions (every rooted tree up to the
declared order, Butcher 2016, §3), the same for the embedded method, and that
its dense-output polynomial reproduces the weights at θ = 1. A tableau with a
wrong coefficient therefore cannot be constructed, so it cannot be imported.
FSAL ("first same as last") is detected from the coefficients, never declared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import NoReturn, Sequence

__all__ = ["ButcherTableau", "TableauError", "TABLEAUS"]


class TableauError(ValueError):
    """A Butcher tableau that violates a consistency or order condition."""


@lru_cache(maxsize=None)
def _rooted_trees(order: int) -> tuple:
    """All rooted trees with ``order`` vertices; a tree is a sorted tuple of its subtrees."""
    if order == 1:
        return ((),)
    trees = set()
    for children in _forests(order - 1, order - 1):
        trees.add(tuple(sorted(children)))
    return tuple(sorted(trees))


@lru_cache(maxsize=None)
def _forests(total: int, max_part: int) -> tuple:
    """Multisets of rooted trees whose sizes sum to ``total`` (sizes non-increasing, ≤ max_part)."""
    if total == 0:
        return ((),)
    out = []
    for size in range(min(total, max_part), 0, -1):
        for tree in _rooted_trees(size):
            for rest in _forests(total - size, size):
                # keep canonical order inside equal sizes to avoid duplicates
                if rest and _tree_size(rest[0]) == size and rest[0] < tree:
                    continue
                out.append((tree,) + rest)
    return tuple(out)


def _tree_size(tree: tuple) -> int:
    return 1 + sum(_tree_size(c) for c in tree)


def _tree_density(tree: tuple) -> int:
    return _tree_size(tree) * math.prod(_tree_density(c) for c in tree)


def _stage_weights(tree: tuple, a: tuple, s: int) -> list[float]:
    """Ψ(τ)_i: the stage-wise elementary weight (1 for the single-vertex tree)."""
    out = [1.0] * s
    for child in tree:
        inner = _stage_weights(child, a, s)
        a_inner = [sum(a[i][j] * inner[j] for j in range(len(a[i]))) for i in range(s)]
        out = [o * x for o, x in zip(out, a_inner)]
    return out


def _order_defects(a: tuple, b: tuple, order: int) -> list[tuple[int, tuple, float]]:
    """Violations of Φ(τ) = 1/γ(τ) for all trees τ with |τ| ≤ order."""
    s = len(b)
    bad = []
    for n in range(1, order + 1):
        for tree in _rooted_trees(n):
            phi = sum(bi * wi for bi, wi in zip(b, _stage_weights(tree, a, s)))
            defect = phi - 1.0 / _tree_density(tree)
            if abs(defect) > 1e-10:
                bad.append((n, tree, defect))
    return bad


def _f(x) -> float:
    return float(Fraction(x)) if isinstance(x, str) else float(x)


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    ``a`` is the strictly lower-triangular stage matrix given row by row
    (row ``i`` has ``i`` entries), ``b`` the weights of the propagated
    solution, ``b_err`` (adaptive methods) the *error* weights ``b - b̂`` so
    that ``err = h Σ b_err_i k_i``, and ``dense`` (optional) the dense-output
    matrix: ``y(t + θh) = y + h Σ_i k_i Σ_j dense[i][j] θ^(j+1)``.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    reference: str = ""
    fsal: bool = field(init=False)

    def __post_init__(self):
        conv = lambda row: tuple(_f(x) for x in row)  # noqa: E731
        object.__setattr__(self, "c", conv(self.c))
        object.__setattr__(self, "a", tuple(conv(r) for r in self.a))
        object.__setattr__(self, "b", conv(self.b))
        if self.b_err is not None:
            object.__setattr__(self, "b_err", conv(self.b_err))
        if self.dense is not None:
            object.__setattr__(self, "dense", tuple(conv(r) for r in self.dense))
        self._check()
        last = self.a[-1] if len(self.a) > 1 else ()
        fsal = (
            len(self.b) > 1
            and self.c[-1] == 1.0
            and self.b[-1] == 0.0
            and len(last) == len(self.b) - 1
            and all(abs(x - y) < 1e-15 for x, y in zip(last, self.b[:-1]))
        )
        object.__setattr__(self, "fsal", fsal)

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    def _fail(self, what: str) -> NoReturn:
        raise TableauError(f"Butcher tableau {self.name!r}: {what}")

    def _check(self):
        s = len(self.b)
        if self.order < 1:
            self._fail(f"order must be >= 1, got {self.order}")
        if len(self.c) != s or len(self.a) != s:
            self._fail(f"c has {len(self.c)} entries and a has {len(self.a)} rows; both must equal the {s} weights")
        for i, row in enumerate(self.a):
            if len(row) != i:
                self._fail(f"row {i} of a must have {i} entries (explicit method), has {len(row)}")
            if abs(sum(row) - self.c[i]) > 1e-12:
                self._fail(f"row {i} of a sums to {sum(row)!r}, but c[{i}] = {self.c[i]!r}")
        if abs(sum(self.b) - 1.0) > 1e-12:
            self._fail(f"weights b sum to {sum(self.b)!r}, not 1")
        bad = _order_defects(self.a, self.b, self.order)
        if bad:
            n, tree, d = bad[0]
            self._fail(f"violates an order-{n} condition (tree {tree}, defect {d:.3e}); it is not of order {self.order}")
        if self.b_err is not None:
            if len(self.b_err) != s:
                self._fail(f"b_err has {len(self.b_err)} entries, expected {s}")
            if abs(sum(self.b_err)) > 1e-12:
                self._fail(f"error weights b_err sum to {sum(self.b_err)!r}, not 0")
            if self.error_order is None or not 1 <= self.error_order < self.order:
                self._fail(f"error_order must be in [1, {self.order - 1}], got {self.error_order}")
            b_hat = tuple(x - e for x, e in zip(self.b, self.b_err))
            bad = _order_defects(self.a, b_hat, self.error_order)
            if bad:
                n, tree, d = bad[0]
                self._fail(f"embedded method violates an order-{n} condition (defect {d:.3e})")
        elif self.error_order is not None:
            self._fail("error_order given without error weights b_err")
        if self.dense is not None:
            if len(self.dense) != s:
                self._fail(f"dense has {len(self.dense)} rows, expected {s}")
            for i, row in enumerate(self.dense):
                if abs(sum(row) - self.b[i]) > 1e-10:
                    self._fail(f"dense output row {i} gives {sum(row)!r} at θ=1, but b[{i}] = {self.b[i]!r}")
            # continuity of the derivative is not required, but the interpolant must be consistent:
            first = sum(row[0] for row in self.dense)
            if abs(first - 1.0) > 1e-10:
                self._fail(f"dense output is inconsistent: Σ_i dense[i][0] = {first!r}, not 1")

    def dense_weights(self, theta: float) -> list[float]:
        """b_i(θ) such that y(t + θh) = y + h Σ b_i(θ) k_i (requires ``dense``)."""
        assert self.dense is not None, f"method {self.name!r} has no dense output"
        out = []
        for row in self.dense:
            acc, p = 0.0, theta
            for coef in row:
                acc += coef * p
                p *= theta
            out.append(acc)
        return out


# A coefficient as written in the papers: a number, or an exact fraction as a string ("1/3").
Num = float | int | str


def _exact(name: str, order: int, *, c: Sequence[Num], a: Sequence[Sequence[Num]], b: Sequence[Num],
           b_err: Sequence[Num] | None = None, error_order: int | None = None,
           dense: Sequence[Sequence[Num]] | None = None, reference: str = "") -> ButcherTableau:
    """A tableau from the coefficients as published (fractions exact until the one conversion to float)."""

    def row(r: Sequence[Num]) -> tuple[float, ...]:
        return tuple(_f(x) for x in r)

    return ButcherTableau(name, order, c=row(c), a=tuple(row(r) for r in a), b=row(b),
                          b_err=None if b_err is None else row(b_err), error_order=error_order,
                          dense=None if dense is None else tuple(row(r) for r in dense), reference=reference)


EULER = _exact("euler", 1, c=(0,), a=((),), b=(1,), reference="Euler (1768)")

MIDPOINT = _exact(
    "midpoint", 2, c=(0, "1/2"), a=((), ("1/2",)), b=(0, 1), reference="explicit midpoint rule"
)

HEUN = _exact("heun", 2, c=(0, 1), a=((), (1,)), b=("1/2", "1/2"), reference="Heun's method (explicit trapezoid)")

RK4 = _exact(
    "rk4",
    4,
    c=(0, "1/2", "1/2", 1),
    a=((), ("1/2",), (0, "1/2"), (0, 0, 1)),
    b=("1/6", "1/3", "1/3", "1/6"),
    reference="classical Runge–Kutta (Kutta 1901)",
)

BOSH3 = _exact(
    "bosh3",
    3,
    c=(0, "1/2", "3/4", 1),
    a=((), ("1/2",), (0, "3/4"), ("2/9", "1/3", "4/9")),
    b=("2/9", "1/3", "4/9", 0),
    b_err=("-5/72", "1/12", "1/9", "-1/8"),
    error_order=2,
    # Hermite-type cubic dense output of the Bogacki–Shampine pair (as in SciPy's RK23).
    dense=((1, "-4/3", "5/9"), (0, 1, "-2/3"), (0, "4/3", "-8/9"), (0, -1, 1)),
    reference="Bogacki & Shampine, Appl. Math. Lett. 2 (1989)",
)

# err weights are b - b̂, written as exact fractions
DOPRI5 = _exact(
    "dopri5",
    5,
    c=(0, "1/5", "3/10", "4/5", "8/9", 1, 1),
    a=(
        (),
        ("1/5",),
        ("3/40", "9/40"),
        ("44/45", "-56/15", "32/9"),
        ("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        ("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
        ("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"),
    ),
    b=("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0),
    b_err=("71/57600", 0, "-71/16695", "71/1920", "-17253/339200", "22/525", "-1/40"),
    error_order=4,
    # 4th-order continuous extension (Dormand & Prince; Shampine 1986), as used by SciPy's RK45.
    dense=(
        (1, "-8048581381/2820520608", "8663915743/2820520608", "-12715105075/11282082432"),
        (0, 0, 0, 0),
        (0, "131558114200/32700410799", "-68118460800/10900136933", "87487479700/32700410799"),
        (0, "-1754552775/470086768", "14199869525/1410260304", "-10690763975/1880347072"),
        (0, "127303824393/49829197408", "-318862633887/49829197408", "701980252875/199316789632"),
        (0, "-282668133/205662961", "2019193451/616988883", "-1453857185/822651844"),
        (0, "40617522/29380423", "-110615467/29380423", "69997945/29380423"),
    ),
    reference="Dormand & Prince, J. Comput. Appl. Math. 6 (1980)",
)


def _tsit5_dense():
    # Tsitouras (2011), §3: b_i(θ) given in factored form; expanded here to powers θ..θ^4.
    def expand(scale, roots_quadratic=None, linear_roots=(), theta_power=1):
        # returns coefficients of θ^1..θ^4 for scale * θ^p * Π(θ - r) * (θ² + pθ + q)
        coeffs = [0.0] * 5
        coeffs[theta_power] = scale
        for r in linear_roots:
            coeffs = [-r * coeffs[k] + (coeffs[k - 1] if k >= 1 else 0) for k in range(5)]
        if roots_quadratic is not None:
            p, q = roots_quadratic
            coeffs = [
                q * coeffs[k] + (p * coeffs[k - 1] if k >= 1 else 0) + (coeffs[k - 2] if k >= 2 else 0)
                for k in range(5)
            ]
        return tuple(coeffs[1:])

    return (
        expand(-1.0530884977290216, (-1.4364028541716351, 0.7139816917074209), (1.3299890189751412,), 1),
        expand(0.1017, (-2.1966568338249754, 1.2949852507374631), (), 2),
        expand(2.490627285651252793, (-2.38535645472061657, 1.57803468208092486), (), 2),
        expand(-16.54810288924490272, None, (1.21712927295533244, 0.61620406037800089), 2),
        expand(47.37952196281928122, None, (1.203071208372362603, 0.658047292653547382), 2),
        expand(-34.87065786149660974, None, (1.2, 0.666666666666666667), 2),
        expand(2.5, None, (1.0, 0.6), 2),
    )


TSIT5 = _exact(
    "tsit5",
    5,
    c=(0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774),
    ),
    b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774, 0),
    b_err=(
        0.001780011052226,
        0.000816434459657,
        -0.007880878010262,
        0.144711007173263,
        -0.582357165452555,
        0.458082105929187,
        -1 / 66,
    ),
    error_order=4,
    dense=_tsit5_dense(),
    reference="Tsitouras, Comput. Math. Appl. 62 (2011)",
)

HEUN3 = _exact(
    "heun3",
    3,
    c=(0, "1/3", "2/3"),
    a=((), ("1/3",), (0, "2/3")),
    b=("1/4", 0, "3/4"),
    reference="Heun's third-order method (Heun 1900)",
)

# Euler embedded in Heun's method: a 2(1) pair
ADAPTIVE_HEUN = _exact(
    "adaptive_heun",
    2,
    c=(0, 1),
    a=((), (1,)),
    b=("1/2", "1/2"),
    b_err=("-1/2", "1/2"),
    error_order=1,
    reference="Heun's method with Euler as the embedded method",
)

# Fehlberg's RKF1(2) with the 2nd-order solution propagated: 3 stages
FEHLBERG2 = _exact(
    "fehlberg2",
    2,
    c=(0, "1/2", 1),
    a=((), ("1/2",), ("1/256", "255/256")),
    b=("1/512", "255/256", "1/512"),
    b_err=("-1/512", 0, "1/512"),
    error_order=1,
    reference="Fehlberg, NASA TR R-315 (1969), RKF1(2)",
)

# Dormand & Prince's 8th-order method with Hairer's 5th-order embedded error estimate: the 12 stages of DOP853
# (Hairer, Nørsett & Wanner, Solving ODEs I, 2nd ed., §II.10; coefficients as in Hairer's dop853.f, which SciPy's
# DOP853 transcribes). DOP853 also combines a 3rd-order estimate into its error and has a 7th-order dense output
# from 3 extra stages; here the single 5th-order estimate drives the steps, and between steps a cubic Hermite
# interpolant gives the outputs. The order conditions up to 8 (200 rooted trees) are checked at import.
DOPRI8 = _exact(
    "dopri8",
    8,
    c=(
        0.0, 0.05260015195876773, 0.0789002279381516, 0.1183503419072274, 0.2816496580927726, 0.3333333333333333,
        0.25, 0.3076923076923077, 0.6512820512820513, 0.6, 0.8571428571428571, 1.0
    ),
    a=(
        (),
        (
            0.05260015195876773,
        ),
        (
            0.0197250569845379, 0.0591751709536137
        ),
        (
            0.02958758547680685, 0.0, 0.08876275643042054
        ),
        (
            0.2413651341592667, 0.0, -0.8845494793282861, 0.924834003261792
        ),
        (
            0.037037037037037035, 0.0, 0.0, 0.17082860872947386, 0.12546768756682242
        ),
        (
            0.037109375, 0.0, 0.0, 0.17025221101954405, 0.06021653898045596, -0.017578125
        ),
        (
            0.03709200011850479, 0.0, 0.0, 0.17038392571223998, 0.10726203044637328, -0.015319437748624402,
            0.008273789163814023
        ),
        (
            0.6241109587160757, 0.0, 0.0, -3.3608926294469414, -0.868219346841726, 27.59209969944671,
            20.154067550477894, -43.48988418106996
        ),
        (
            0.47766253643826434, 0.0, 0.0, -2.4881146199716677, -0.590290826836843, 21.230051448181193,
            15.279233632882423, -33.28821096898486, -0.020331201708508627
        ),
        (
            -0.9371424300859873, 0.0, 0.0, 5.186372428844064, 1.0914373489967295, -8.149787010746927,
            -18.52006565999696, 22.739487099350505, 2.4936055526796523, -3.0467644718982196
        ),
        (
            2.273310147516538, 0.0, 0.0, -10.53449546673725, -2.0008720582248625, -17.9589318631188,
            27.94888452941996, -2.8589982771350235, -8.87285693353063, 12.360567175794303, 0.6433927460157636
        ),
    ),
    b=(
        0.054293734116568765, 0.0, 0.0, 0.0, 0.0, 4.450312892752409, 1.8915178993145003, -5.801203960010585,
        0.3111643669578199, -0.1521609496625161, 0.20136540080403034, 0.04471061572777259
    ),
    b_err=(
        0.01312004499419488, 0.0, 0.0, 0.0, 0.0, -1.2251564463762044, -0.4957589496572502, 1.6643771824549864,
        -0.35032884874997366, 0.3341791187130175, 0.08192320648511571, -0.022355307863886294
    ),
    error_order=5,
    reference="Prince & Dormand, J. Comput. Appl. Math. 7 (1981); Hairer, Nørsett & Wanner I, §II.10 (DOP853)",
)


TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t for t in (EULER, MIDPOINT, HEUN, HEUN3, RK4, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
# torchdiffeq's name for Heun's method
TABLEAUS["heun2"] = HEUN
