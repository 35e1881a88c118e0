"""Self-distillation in closed form: kernel ridge regression, generation after generation.

Mobahi, Farajtabar & Bartlett (NeurIPS 2020), "Self-distillation amplifies regularization in Hilbert
space", study the simplest setting where self-distillation can be solved exactly: fit a function in
an RKHS with kernel ``k`` by ridge regression, then refit on the model's own predictions, and so on.
With training inputs ``X``, kernel matrix ``K = k(X, X) = V diag(d) V^T`` and ridge ``c > 0``, one fit
on targets ``u`` predicts, at the training points,

    f = K (K + c I)^{-1} u = V diag( d_i / (d_i + c) ) V^T u                       (representer theorem)

so each generation multiplies the eigen-coefficients of the targets by ``s_i = d_i / (d_i + c) < 1``.
Pure self-distillation (targets = last predictions) gives ``f_k = V diag(s^{k+1}) V^T y``: the small
eigen-directions die first (a sparser basis, stronger regularisation; a few rounds can reduce
over-fitting), and as ``k`` grows every coefficient goes to 0 -- the predictions *collapse*.

Borup & Andersen (NeurIPS 2021), "Even your teacher needs guidance: ground-truth targets dampen
regularization imposed by self-distillation", mix the ground truth back in: the targets of
generation ``k >= 1`` are ``alpha * y + (1 - alpha) * f_{k-1}``. In the eigenbasis each coefficient of
``y`` is multiplied by ``m_k`` with ``m_0 = s`` and ``m_k = s (alpha + (1 - alpha) m_{k-1})``, i.e.

    m_k = r^k s + (1 - r^k) m_inf,    r = (1 - alpha) s,    m_inf = alpha d / (alpha d + c) = d / (d + c / alpha)

so ``f_k = V diag(m_k) V^T y`` interpolates geometrically between the first fit (``m_0 = s``) and ridge
regression with the *amplified* regularisation ``c / alpha`` (their result that infinitely many steps
equal the original problem with amplified regularisation); ``alpha = 0`` recovers Mobahi's collapse.

* :func:`kernel_matrix` -- RBF, Laplacian or linear kernels.
* :func:`self_distill_closed_form` -- all generations from one eigendecomposition (no solves).
* :func:`self_distill_iterative` -- the same by actually refitting each generation (agrees to 1e-6).
* :func:`eigen_multipliers` -- the ``m_k`` above, per eigenvalue, for plots.
* :func:`optimal_alpha` -- Borup & Andersen's closed-form best weight for one step;
  :func:`best_fixed_alpha` -- the best single weight for all steps, by a fine grid.
* :func:`collapse_curve` -- the norm of the predictions per generation (``alpha = 0``: decreasing to 0).
* :func:`toy_problem` -- a 1D noisy regression with a known clean function.

Everything is float64 (the kernels are ill-conditioned). Targets ``y`` may be ``[n]`` or ``[n, m]``
(e.g. one-hot labels).
"""

from __future__ import annotations

import math

import torch

__all__ = ["kernel_matrix", "eigen_multipliers", "self_distill_closed_form", "self_distill_iterative",
           "optimal_alpha", "optimal_alpha_path", "best_fixed_alpha", "collapse_curve", "toy_problem"]

KINDS = ("rbf", "laplacian", "linear")


# ---------------------------------------------------------------------------- inputs
def _as2d(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"{name} must be [n] or [n, D], got {tuple(x.shape)}")
    return x


def _check_problem(K: torch.Tensor, y: torch.Tensor, c: float, alpha: float | None = None,
                   generations: int | None = None):
    K = torch.as_tensor(K, dtype=torch.float64)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be a square kernel matrix [n, n], got {tuple(K.shape)}")
    if not torch.allclose(K, K.T, atol=1e-10 * max(1.0, float(K.abs().max()))):
        raise ValueError("K must be symmetric (a kernel matrix k(X, X))")
    y = torch.as_tensor(y, dtype=torch.float64)
    if y.shape[0] != K.shape[0] or y.dim() not in (1, 2):
        raise ValueError(f"y must be [n] or [n, m] with n = {K.shape[0]}, got {tuple(y.shape)}")
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"the ridge c must be a finite number > 0, got {c!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha (the weight on the ground truth) must lie in [0, 1], got {alpha!r}")
    if generations is not None and (not isinstance(generations, int) or generations < 0):
        raise ValueError(f"generations must be an integer >= 0, got {generations!r}")
    return K, y


def kernel_matrix(x: torch.Tensor, x2: torch.Tensor | None = None, kind: str = "rbf",
                  gamma: float = 1.0) -> torch.Tensor:
    """Kernel matrix ``k(x_i, x2_j)``, float64 ``[n, n2]`` (``x2`` defaults to ``x``).

    kind : ``"rbf"`` ``exp(-gamma |x - x'|^2)``, ``"laplacian"`` ``exp(-gamma |x - x'|_1)``, or
        ``"linear"`` ``<x, x'>``. x : ``[n]`` or ``[n, D]``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; known: {', '.join(KINDS)}")
    if kind != "linear" and not (gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma}")
    a = _as2d(x, "x")
    b = a if x2 is None else _as2d(x2, "x2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and x2 differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if kind == "linear":
        return a @ b.T
    if kind == "rbf":
        d2 = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0.0)
        return torch.exp(-gamma * d2)
    return torch.exp(-gamma * torch.cdist(a, b, p=1))


def _eigh(K: torch.Tensor):
    d, V = torch.linalg.eigh(K)
    return d.clamp_min(0.0), V  # a kernel matrix is PSD; clip round-off negatives


def eigen_multipliers(d: torch.Tensor, c: float, alpha: float, generation: int) -> torch.Tensor:
    """The factor ``m_k`` that generation ``k`` applies to each eigen-coefficient of ``y``::

        m_k = r^k s + (1 - r^k) m_inf,  s = d / (d + c),  r = (1 - alpha) s,  m_inf = alpha d / (alpha d + c)

    Written with ``1 - r = (c + alpha d) / (d + c)`` and ``log1p`` / ``expm1`` so it stays accurate
    when ``r`` is close to 1. ``d``: eigenvalues of K (``>= 0``).
    """
    d = torch.as_tensor(d, dtype=torch.float64).clamp_min(0.0)
    s = d / (d + c)
    one_minus_r = ((c + alpha * d) / (d + c)).clamp(max=1.0)
    log_r = torch.log1p(-one_minus_r)                    # -inf where r == 0 (alpha == 1 or d == 0)
    rk = torch.exp(generation * log_r) if generation > 0 else torch.ones_like(d)
    m_inf = alpha * d / (alpha * d + c)
    return rk * s + (1.0 - rk) * m_inf


# ---------------------------------------------------------------------------- the two solvers
def self_distill_closed_form(K: torch.Tensor, y: torch.Tensor, c: float, alpha: float = 0.0,
                             generations: int = 5, K_test: torch.Tensor | None = None):
    """Predictions of generations ``0..G`` from one eigendecomposition ``K = V diag(d) V^T``.

    Generation 0 is the ridge fit to ``y``; generation ``k >= 1`` is the fit to
    ``alpha * y + (1 - alpha) * f_{k-1}(X)`` (Mobahi et al. 2020 for ``alpha = 0``; Borup & Andersen
    2021 for the ground-truth weight). At the training points
    ``f_k = V diag(m_k) V^T y`` with ``m_k`` from :func:`eigen_multipliers`.

    Parameters
    ----------
    K : ``[n, n]`` kernel matrix of the training inputs. y : ``[n]`` or ``[n, m]`` targets.
    c : ridge > 0. alpha : weight on the ground truth in [0, 1]. generations : G >= 0.
    K_test : optional ``[n_test, n]`` kernel between test and training inputs.

    Returns
    -------
    ``[G + 1, n, ...]`` training predictions (float64), or the pair ``(train, test [G + 1, n_test, ...])``
    when ``K_test`` is given.
    """
    K, y = _check_problem(K, y, c, alpha, generations)
    d, V = _eigh(K)
    yt = V.T @ y                                             # eigen-coefficients of y
    shape = (-1,) + (1,) * (y.dim() - 1)
    train = torch.stack([V @ (eigen_multipliers(d, c, alpha, k).reshape(shape) * yt)
                         for k in range(generations + 1)])
    if K_test is None:
        return train
    K_test = torch.as_tensor(K_test, dtype=torch.float64)
    if K_test.dim() != 2 or K_test.shape[1] != K.shape[0]:
        raise ValueError(f"K_test must be [n_test, n] with n = {K.shape[0]}, got {tuple(K_test.shape)}")
    inv = (1.0 / (d + c)).reshape(shape)
    test = []
    for k in range(generations + 1):
        # targets of generation k in the eigenbasis: y for k = 0, else alpha y + (1 - alpha) f_{k-1}
        tk = yt if k == 0 else alpha * yt + (1 - alpha) * eigen_multipliers(d, c, alpha, k - 1).reshape(shape) * yt
        test.append(K_test @ (V @ (inv * tk)))               # k(x, X) (K + cI)^{-1} u_k
    return train, torch.stack(test)


def self_distill_iterative(K: torch.Tensor, y: torch.Tensor, c: float, alpha: float = 0.0,
                           generations: int = 5, K_test: torch.Tensor | None = None):
    """The same generations, by actually refitting: for ``k = 0..G`` solve ``(K + c I) beta_k = u_k``
    with ``u_0 = y`` and ``u_k = alpha y + (1 - alpha) K beta_{k-1}``, and predict ``K beta_k``.

    This is what training a fresh student on the previous model's outputs does in the kernel setting;
    it must agree with :func:`self_distill_closed_form` (to about 1e-6 or better in float64). Same
    arguments and returns.
    """
    K, y = _check_problem(K, y, c, alpha, generations)
    A = K + c * torch.eye(K.shape[0], dtype=torch.float64)
    train, test, u = [], [], y
    for _ in range(generations + 1):
        beta = torch.linalg.solve(A, u)
        f = K @ beta
        train.append(f)
        if K_test is not None:
            test.append(torch.as_tensor(K_test, dtype=torch.float64) @ beta)
        u = alpha * y + (1.0 - alpha) * f
    train = torch.stack(train)
    return train if K_test is None else (train, torch.stack(test))


# ---------------------------------------------------------------------------- choosing alpha
def optimal_alpha(K: torch.Tensor, y: torch.Tensor, f_star: torch.Tensor, c: float,
                  f_prev: torch.Tensor) -> float:
    """The weight on the ground truth that minimises the next generation's error to a known clean
    function, in closed form (Borup & Andersen 2021 give a closed-form optimal weight for each step;
    this is that one-step optimum, derived here directly from the affine dependence on alpha).

    The next predictions are affine in ``alpha``: with ``A = K (K + c I)^{-1}``,
    ``f(alpha) = A f_prev + alpha A (y - f_prev)``, so ``|f(alpha) - f_star|^2`` is a parabola with minimum

        alpha* = < f_star - A f_prev, A (y - f_prev) > / | A (y - f_prev) |^2.

    It is returned as is and may fall outside [0, 1] (Dang, Patil & Rinaldo 2026 study this
    unconstrained weight); clip it to use it as a mixing weight. All vectors are at the training
    inputs, ``[n]`` or ``[n, m]``.
    """
    K, y = _check_problem(K, y, c)
    f_star = torch.as_tensor(f_star, dtype=torch.float64)
    f_prev = torch.as_tensor(f_prev, dtype=torch.float64)
    if f_star.shape != y.shape or f_prev.shape != y.shape:
        raise ValueError(f"f_star and f_prev must have y's shape {tuple(y.shape)}")
    d, V = _eigh(K)
    shape = (-1,) + (1,) * (y.dim() - 1)
    A = lambda u: V @ ((d / (d + c)).reshape(shape) * (V.T @ u))  # noqa: E731
    b = A(y - f_prev)
    denom = float((b * b).sum())
    if denom <= 1e-300:
        return float("nan")  # the step does not depend on alpha
    return float(((f_star - A(f_prev)) * b).sum() / denom)


def optimal_alpha_path(K: torch.Tensor, y: torch.Tensor, f_star: torch.Tensor, c: float, generations: int,
                       clip: bool = True):
    """Greedy use of :func:`optimal_alpha`: generation 0 fits ``y``; each later generation uses the
    one-step optimal weight (clipped to [0, 1] if ``clip``). Returns ``(alphas [G], predictions [G+1, n, ...])``."""
    K, y = _check_problem(K, y, c, None, generations)
    A = K + c * torch.eye(K.shape[0], dtype=torch.float64)
    f = K @ torch.linalg.solve(A, y)
    preds, alphas = [f], []
    for _ in range(generations):
        a = optimal_alpha(K, y, f_star, c, f)
        a = 1.0 if math.isnan(a) else (min(1.0, max(0.0, a)) if clip else a)
        f = K @ torch.linalg.solve(A, a * y + (1 - a) * f)
        alphas.append(a)
        preds.append(f)
    return alphas, torch.stack(preds)


def best_fixed_alpha(K: torch.Tensor, y: torch.Tensor, f_star: torch.Tensor, c: float, generations: int,
                     grid: torch.Tensor | None = None):
    """The single weight ``alpha`` (used at every generation) minimising the mean squared error of
    generation ``G`` to the clean function ``f_star`` at the training inputs, by a fine grid search
    (default 1001 points in [0, 1]) over the closed form. For a fixed alpha over several steps the
    error is a polynomial of degree ``2G`` in alpha, so we search instead of solving.

    Returns ``(alpha, error, errors [len(grid)])``.
    """
    K, y = _check_problem(K, y, c, None, generations)
    f_star = torch.as_tensor(f_star, dtype=torch.float64)
    if grid is None:
        grid = torch.linspace(0, 1, 1001, dtype=torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.numel() < 1 or (grid < 0).any() or (grid > 1).any():
        raise ValueError("grid must hold weights in [0, 1]")
    d, V = _eigh(K)
    yt, ft = V.T @ y, V.T @ f_star
    shape = (-1,) + (1,) * (y.dim() - 1)
    errs = torch.stack([((eigen_multipliers(d, c, float(a), generations).reshape(shape) * yt - ft) ** 2).mean()
                        for a in grid])  # V is orthogonal: the error is the same in the eigenbasis
    i = int(errs.argmin())
    return float(grid[i]), float(errs[i]), errs


def collapse_curve(K: torch.Tensor, y: torch.Tensor, c: float, generations: int, alpha: float = 0.0) -> list[float]:
    """Euclidean norm of the training predictions, generation by generation. With ``alpha = 0`` it is
    ``|diag(s^{k+1}) V^T y|``, strictly decreasing to 0 (Mobahi et al. 2020: self-distillation alone
    collapses the solution); with ``alpha > 0`` it levels off at the amplified-ridge fit."""
    preds = self_distill_closed_form(K, y, c, alpha, generations)
    return [float(p.norm()) for p in preds]


def toy_problem(n: int = 64, noise: float = 0.3, seed: int = 0):
    """A 1D regression with a known clean function: ``x`` uniform in [-3, 3] (sorted),
    ``f_star(x) = sin(2x) + 0.3 x``, ``y = f_star + noise * N(0, 1)``. Returns ``(x [n, 1], y [n], f_star [n])``."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g, dtype=torch.float64) * 6 - 3).sort().values[:, None]
    f = torch.sin(2 * x[:, 0]) + 0.3 * x[:, 0]
    return x, f + noise * torch.randn(n, generator=g, dtype=torch.float64), f
