"""Ranking strategies against a simulated position-biased, noisy judge, through the strategies' generator protocol.

Why: the `sort` strategy (prefdata/rank/sort.py) must rank as well as round robin with both orders at a fraction
of its calls (issue 23). The judge: true qualities q ~ N(0, 1); one call with `first` shown first gives
z = (q_first - q_second)/T + b + ε, ε ~ Logistic(0, 1), so P(first wins) = σ((q₁ - q₂)/T + b) with no tie band;
with a tie band δ it says first if z > δ, second if z < -δ, else tie; each call fails with probability `fail`.
Every pair is judged in both orders (`call_orders(pair, "both", ...)` + `combine`), and a call's randomness is fixed
per (trial, first, second), so strategies see the same verdict for the same call (common random numbers, and the
same answer a cached rerun would give).

Per strategy: Kendall τ of the output order to the true order, best-right and worst-right rates, judge calls per
prompt, and the exported pairs per prompt and inverted share (chosen truly worse than rejected) for best-vs-each
(complete rankings only; a pair whose direct calls did not all prefer the chosen one is dropped, as export does)
and for best-worst.

    .venv/bin/python bench/bench_ranking.py            # full grid, ~3 min of one core
    .venv/bin/python bench/bench_ranking.py --quick    # N=16 only, fewer trials
    .venv/bin/python bench/bench_ranking.py --margin-rules   # export's --min-margin rule on sort rankings
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefdata.judges.verdict import Verdict  # noqa: E402
from prefdata.rank.ranking import Pair, PairOutcome, Ranking, call_orders, combine, iterative, round_robin  # noqa: E402
from prefdata.rank.sort import sort  # noqa: E402
from tests.pairs import ranking_pairs  # noqa: E402

StrategyFn = Callable[[Sequence[str]], object]


@dataclass
class Judge:
    """One trial's simulated judge; uniforms per ordered pair fix each call's verdict."""

    q: np.ndarray
    temp: float
    bias: float
    tie_band: float
    fail: float
    rng: np.random.Generator

    def __post_init__(self) -> None:
        n = len(self.q)
        self.u = self.rng.random((n, n))
        self.f = self.rng.random((n, n))

    def __call__(self, a: str, b: str) -> Verdict:
        i, j = int(a[1:]), int(b[1:])
        if self.f[i, j] < self.fail:
            return Verdict(a, b, "fail", None, error="simulated")
        m = (self.q[i] - self.q[j]) / self.temp + self.bias
        p_first = 1.0 / (1.0 + math.exp(-(m - self.tie_band)))
        p_second = 1.0 / (1.0 + math.exp(m + self.tie_band))
        u = self.u[i, j]
        if u < p_first:
            return Verdict(a, b, "a", a)
        if u >= 1.0 - p_second:
            return Verdict(a, b, "b", b)
        return Verdict(a, b, "tie", None)


def drive(strategy: StrategyFn, ids: list[str], judge: Judge) -> tuple[Ranking, dict[Pair, list[Verdict]], int]:
    """Run one prompt's strategy to the end; returns the ranking, each pair's verdicts and the distinct calls."""
    gen = strategy(ids)
    cache: dict[tuple[str, str], Verdict] = {}
    by_pair: dict[Pair, list[Verdict]] = {}
    try:
        need = next(gen)  # type: ignore[call-overload]
        while True:
            got: dict[Pair, PairOutcome] = {}
            for pair in need:
                vs = []
                for a, b in call_orders(pair, "both", 0, "p"):
                    if (a, b) not in cache:
                        cache[(a, b)] = judge(a, b)
                    vs.append(cache[(a, b)])
                by_pair[pair] = vs
                got[pair] = combine(pair, vs)
            need = gen.send(got)  # type: ignore[attr-defined]
    except StopIteration as stop:
        return stop.value, by_pair, len(cache)


def kendall_tau(order: list[str], q: np.ndarray) -> float:
    """τ-a between the output order (position 0 = best) and the true qualities."""
    x = np.array([q[int(c[1:])] for c in order])
    n = len(x)
    s = sum(np.sign(x[i] - x[i + 1 :]).sum() for i in range(n - 1))
    return float(s) / (n * (n - 1) / 2)


def exported(r: Ranking, by_pair: dict[Pair, list[Verdict]], shape: str) -> list[tuple[str, str]]:
    """The pairs export would write for this ranking (without text-based filters)."""
    if shape == "best-vs-each" and (not r.complete or any(k is None for k in r.ranks)):
        return []  # export skips a prompt whose full order rests on a failed call
    row = {"candidate_ids": r.candidate_ids, "ranks": r.ranks, "best_id": r.best_id, "worst_id": r.worst_id}
    pairs, _ = ranking_pairs(row, shape)
    direct: dict[frozenset[str], list[str | None]] = {}
    for p, vs in by_pair.items():
        direct[frozenset(p)] = [v.winner_id for v in vs if v.verdict != "fail"]
    return [(c, d) for c, d in pairs if all(w == c for w in direct.get(frozenset((c, d)), []))]


def run_setting(name: str, strategy: StrategyFn, n: int, temp: float, bias: float, tie_band: float, fail: float,
                trials: int, seed: int) -> dict[str, float]:  # fmt: skip
    taus, best, worst, calls, complete = [], 0, 0, 0, 0
    bve = bve_inv = bw = bw_inv = 0
    for t in range(trials):
        rng = np.random.default_rng([seed, n, int(temp * 100), int(bias * 100), int(tie_band * 100), int(fail * 100), t])
        q = rng.standard_normal(n)
        judge = Judge(q, temp, bias, tie_band, fail, rng)
        ids = [f"c{i}" for i in range(n)]
        r, by_pair, k = drive(strategy, ids, judge)
        calls += k
        complete += r.complete
        if name != "iterative":
            taus.append(kendall_tau(r.candidate_ids, q))
        best += r.best_id == f"c{int(np.argmax(q))}"
        worst += r.worst_id == f"c{int(np.argmin(q))}"
        qv = {f"c{i}": q[i] for i in range(n)}
        if name != "iterative":
            e = exported(r, by_pair, "best-vs-each")
            bve += len(e)
            bve_inv += sum(qv[c] < qv[d] for c, d in e)
        e = exported(r, by_pair, "best-worst")
        bw += len(e)
        bw_inv += sum(qv[c] < qv[d] for c, d in e)
    return {
        "tau": float(np.mean(taus)) if taus else float("nan"),
        "tau_se": float(np.std(taus) / math.sqrt(len(taus))) if taus else float("nan"),
        "best": best / trials, "worst": worst / trials, "calls": calls / trials, "complete": complete / trials,
        "bve": bve / trials, "bve_inv": bve_inv / bve if bve else float("nan"),
        "bw": bw / trials, "bw_inv": bw_inv / bw if bw else float("nan"),
    }  # fmt: skip


def strategies(variants: bool) -> dict[str, StrategyFn]:
    out: dict[str, StrategyFn] = {"round-robin": round_robin, "iterative": iterative, "sort": sort}
    if variants:
        out["sort, merge + BT only"] = lambda ids: sort(ids, budget=0)
        out["sort, N⌈log₂N⌉ pairs"] = lambda ids: sort(ids, budget=len(ids) * math.ceil(math.log2(len(ids))))
        out["sort, 100 pairs"] = lambda ids: sort(ids, budget=100)
    return out


def margin_rules(seed: int, tie_band: float, trials: int) -> None:
    """Export's margin rule on sort rankings, N=16: which standard error of a strength gap to compare it with.

    exact: sqrt(var_i + var_j - 2 cov_ij) from the covariance; centred: sqrt(se_i² + se_j²) with each se about the
    mean strength (what the rankings store, `centred_stderr`); raw: the same with the prior's common variance left
    in. Pairs: best-vs-each as export forms them (direct calls that disagree dropped)."""
    from prefdata.rank.sort import centred_stderr, fit_strengths

    n = 16
    print(f"Margin rules on sort rankings (N={n}, {trials} trials): best-vs-each pairs/prompt and inverted share")
    print()
    print("| T | b | round robin | sort, no margin | rule | k = 0.5 | k = 1 | k = 1.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for temp in (0.3, 1.0):
        for bias in (0.0, 0.5, 1.0):
            kept: dict[tuple[str, float], list[int]] = {}
            base, rr = [0, 0], [0, 0]
            for t in range(trials):
                rng = np.random.default_rng([seed, n, int(temp * 100), int(bias * 100), int(tie_band * 100), 0, t])
                q = rng.standard_normal(n)
                judge = Judge(q, temp, bias, tie_band, 0.0, rng)
                ids = [f"c{i}" for i in range(n)]
                qv = dict(zip(ids, q, strict=True))
                r, by_pair, _ = drive(sort, ids, judge)
                theta, cov = fit_strengths(ids, {p: combine(p, vs) for p, vs in by_pair.items()})
                var, cvar = np.diag(cov), centred_stderr(cov) ** 2
                e = exported(r, by_pair, "best-vs-each")
                base[0] += len(e)
                base[1] += sum(qv[c] < qv[d] for c, d in e)
                for c, d in e:
                    i, j = int(c[1:]), int(d[1:])
                    ses = {"exact": math.sqrt(var[i] + var[j] - 2 * cov[i, j]), "centred": math.sqrt(cvar[i] + cvar[j]),
                           "raw": math.sqrt(var[i] + var[j])}  # fmt: skip
                    for name, se in ses.items():
                        for k in (0.5, 1.0, 1.5):
                            cell = kept.setdefault((name, k), [0, 0])
                            if theta[i] - theta[j] >= k * se:
                                cell[0] += 1
                                cell[1] += qv[c] < qv[d]
                r2, by2, _ = drive(round_robin, ids, judge)
                e2 = exported(r2, by2, "best-vs-each")
                rr[0] += len(e2)
                rr[1] += sum(qv[c] < qv[d] for c, d in e2)

            def cell(x: list[int]) -> str:
                return f"{x[0] / trials:.1f} / {x[1] / x[0] if x[0] else float('nan'):.4f}"

            for name in ("exact", "centred", "raw"):
                ks = " | ".join(cell(kept[(name, k)]) for k in (0.5, 1.0, 1.5))
                print(f"| {temp} | {bias} | {cell(rr)} | {cell(base)} | {name} | {ks} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=16 only, 100 trials")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--tie-band", type=float, default=0.25)
    ap.add_argument("--margin-rules", action="store_true", help="only the margin-rule table (export --min-margin on sort)")
    args = ap.parse_args()
    if args.margin_rules:
        margin_rules(args.seed, args.tie_band, 100 if args.quick else 300)
        return
    sizes = [16] if args.quick else [4, 8, 16, 32]
    trials = {4: 400, 8: 300, 16: 300, 32: 60}
    temps = [0.3, 1.0]
    biases = [0.0, 0.5, 1.0]
    start = time.process_time()
    print(f"seed {args.seed}, tie band {args.tie_band}, q ~ N(0,1), both orders; trials per setting {trials if not args.quick else 100}")
    print()
    print("| N | T | b | strategy | Kendall τ (± se) | best right | worst right | calls/prompt | best-vs-each pairs/prompt | "
          "inverted (best-vs-each) | inverted (best-worst) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for temp in temps:
            for bias in biases:
                for name, fn in strategies(variants=n == 16).items():
                    k = 100 if args.quick else trials[n]
                    m = run_setting(name, fn, n, temp, bias, args.tie_band, 0.0, k, args.seed)
                    tau = "–" if math.isnan(m["tau"]) else f"{m['tau']:.3f} ± {m['tau_se']:.3f}"
                    bve = "–" if name == "iterative" else f"{m['bve']:.1f}"
                    inv = "–" if math.isnan(m["bve_inv"]) else f"{m['bve_inv']:.3f}"
                    print(f"| {n} | {temp} | {bias} | {name} | {tau} | {m['best']:.2f} | {m['worst']:.2f} | {m['calls']:.1f} | "
                          f"{bve} | {inv} | {m['bw_inv']:.3f} |", flush=True)
    print()
    print(f"With failures (N=16, T=0.3, b=0.5, {trials[16] if not args.quick else 100} trials): a failed call leaves the ranking "
          "incomplete, export skips it until a rerun answers the call.")
    print()
    print("| fail rate | strategy | complete | Kendall τ | calls/prompt | best-vs-each pairs/prompt | inverted (best-vs-each) |")
    print("|---|---|---|---|---|---|---|")
    for fail in (0.01, 0.05):
        for name, fn in strategies(variants=False).items():
            if name == "iterative":
                continue
            m = run_setting(name, fn, 16, 0.3, 0.5, args.tie_band, fail, 100 if args.quick else trials[16], args.seed)
            inv = "–" if math.isnan(m["bve_inv"]) else f"{m['bve_inv']:.3f}"
            print(f"| {fail} | {name} | {m['complete']:.2f} | {m['tau']:.3f} | {m['calls']:.1f} | {m['bve']:.1f} | {inv} |", flush=True)
    print()
    print(f"CPU time {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
