"""Small statistics for `prefdata eval`: Wilson intervals, and the length-controlled win rate.

Length-controlled win rate (the idea of length-controlled AlpacaEval, reduced to one model pair): for every
prompt the outcome y (1 = the model won, 0 = the baseline won, 0.5 = tie) is fitted by a logistic regression
on the length difference, logit P(win) = θ0 + θ1·tanh(Δ/σ), where Δ = len(model) − len(baseline) and σ is the
standard deviation of Δ over the prompts (tanh keeps a few very long answers from dominating). The fit
minimises the binary cross-entropy (fractional targets for ties) plus a small ridge penalty on θ1, so it
stays finite when length alone separates the outcomes; it is solved by Newton's method. The reported LC win
rate is the prediction at zero length difference, sigmoid(θ0): the win rate the model would have if its
answers were as long as the baseline's. Its 95% interval comes from the (penalised) Hessian's variance of θ0,
mapped through the sigmoid.

When the model wins every prompt (or loses every one) θ0 has no finite fit: the likelihood keeps rising as
θ0 → ±∞, and a Newton iterate's "interval" is an artefact (it used to come out as [0, 1]). Then the fit is
reported as absent (`LCFit.exists` False), with the raw win rate and its Wilson interval in its place.

Not AlpacaEval's numbers. AlpacaEval 2.0's length-controlled GLM differs in four ways, so the two are not
comparable: it measures length in characters (here tokens where the run has token counts, else characters);
it has an instruction-difficulty term per prompt, fitted across many models (here there is one model pair,
so there is none); it fits with cross-validated L1 regularisation (here a fixed ridge of 0.1 on θ1); and it
reports the mean of its predictions over the instructions with the length term set to zero (here
sigmoid(θ0), the prediction at zero length difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson(p_hat: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion p_hat observed on n trials (a mean of 0/½/1 outcomes works too)."""
    if n <= 0:
        return (math.nan, math.nan)
    denom = 1.0 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / denom
    half = z * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: list[float], z: float = Z95) -> tuple[float, float, float]:
    """Mean and a normal-approximation 95% interval (sample standard deviation)."""
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, math.nan)
    m = float(np.mean(values))
    if n < 2:
        return (m, math.nan, math.nan)
    se = float(np.std(values, ddof=1)) / math.sqrt(n)
    return (m, m - z * se, m + z * se)


@dataclass
class LCFit:
    lc_win_rate: float
    low: float
    high: float
    intercept: float
    slope: float
    scale: float
    n: int
    exists: bool = True  # False: no finite fit (every outcome a win, or every one a loss); the raw rate is given


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def length_controlled_win_rate(outcomes: list[float], length_diffs: list[float], ridge: float = 0.1) -> LCFit | None:
    """Fit logit P(win) = θ0 + θ1·tanh(Δ/σ) and return sigmoid(θ0) (see the module docstring); None if no data.

    With all wins or all losses there is no finite fit: the result has `exists` False and carries the raw win
    rate and its Wilson interval, which the caller must label as raw."""
    y = np.asarray(outcomes, dtype=np.float64)
    d = np.asarray(length_diffs, dtype=np.float64)
    n = y.size
    if n == 0:
        return None
    if bool(np.all(y == 1.0)) or bool(np.all(y == 0.0)):  # separated by the intercept alone: no finite θ0
        raw = float(y.mean())
        low, high = wilson(raw, n)
        return LCFit(raw, low, high, math.copysign(math.inf, raw - 0.5), 0.0, math.nan, n, exists=False)
    sd = float(np.std(d)) if n > 1 else 0.0
    scale = sd if sd > 0 else 1.0
    x = np.tanh(d / scale)
    X = np.stack([np.ones(n), x], axis=1)
    penalty = np.diag([0.0, ridge])
    if sd == 0:  # no length variation: the slope is not identified, only the intercept is fitted
        penalty = np.diag([0.0, 1e12])
    theta = np.zeros(2)
    eps = 1e-9
    for _ in range(100):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) + penalty @ theta
        w = p * (1 - p) + eps
        H = X.T @ (X * w[:, None]) + penalty + np.diag([eps, 0.0])
        step = np.linalg.solve(H, grad)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    p = _sigmoid(X @ theta)
    w = p * (1 - p) + eps
    H = X.T @ (X * w[:, None]) + penalty + np.diag([eps, 0.0])
    var0 = float(np.linalg.inv(H)[0, 0])
    se0 = math.sqrt(max(var0, 0.0))
    b0 = float(theta[0])
    return LCFit(float(_sigmoid(b0)), float(_sigmoid(b0 - Z95 * se0)), float(_sigmoid(b0 + Z95 * se0)), b0, float(theta[1]),
                 scale, n)


__all__ = ["LCFit", "length_controlled_win_rate", "mean_interval", "wilson"]
