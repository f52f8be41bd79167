"""`prefdata eval`: how good is a checkpoint, against what, on held-out prompts.

Built from the other stages: `generate` writes the model's answers and the baseline's into one run directory
(one answer per prompt each, greedy by default, kept apart by sampler hash), and `rank` judges them with any
judge. So it resumes like every stage: a rerun samples only what is missing and never asks a judge twice.
The baseline is a model (folder, hub name, `demo`) or a column of the prompt file holding baseline answers.

What it reports (eval.json and eval.md in the run directory, and a short table on the terminal):
- verifier judge: each side's accuracy with a 95% Wilson interval when every score of both sides is 0/1
  (decided for both sides together, so the two columns always measure the same thing);
- pointwise judges (verifier, reward model): always each side's mean score with a 95% interval;
- pairwise LLM judge: the win rate against the baseline, each prompt judged in both orders, ties as half;
- always: the win rate (for pointwise judges: by comparing the two scores of a prompt), its 95% Wilson
  interval over prompts, the mean length of each side, and the length-controlled win rate (prefdata.eval.stats).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from prefdata.distributed import check_runner, ray_address_field
from prefdata.errors import PrefdataError
from prefdata.eval.stats import length_controlled_win_rate, mean_interval, wilson
from prefdata.judges.config import judge_field, judge_fields
from prefdata.llm.context import text_tokens
from prefdata.options import opt
from prefdata.run.records import candidate_id, stable_hash
from prefdata.run.store import RunDir, atomic_write_bytes
from prefdata.summary import RecordSummary

DEMO_ALIASES = ("demo", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")


@dataclass
class EvalConfig:
    """A checkpoint against a baseline on one prompt file. Sampling settings apply to both sides alike; the judge's
    fields are JudgeConfig's (`judge_field`), the others go to `--set rank.FIELD=VALUE`."""

    model: str | None = opt(None, "The model to evaluate (folder or hub name); none: the demo model.")
    baseline: str | None = opt(None, "Baseline model (folder, hub name, `demo`) or a column of the prompt file with the "
                               "baseline's answers.")
    prompts: str | None = opt(None, "Held-out prompt file or bundled set name (e.g. arithmetic-eval).")
    judge: str | None = judge_field("judge", default=None)  # none: refused below, eval has no default judge
    reference_field: str | None = opt(None, "Column with the reference answer (verifier judges need it).")
    prompt_field: str | None = opt(None, "Column holding the prompt; none: auto-detect.")
    limit: int | None = opt(None, "Only the first K prompts.")
    backend: str = opt("vllm", "Sampler for both sides: vllm | openai | hf.")
    temperature: float = opt(0.0, "Sampling temperature; 0: greedy answers.")
    max_tokens: int = opt(512, "Max new tokens per answer.")
    seed: int = opt(0, "Sampling and judge seed.")
    judge_model: str | None = judge_field("judge_model")
    base_url: list[str] = judge_field("base_url")
    position_bias: str = judge_field("position_bias")
    engine: str = opt("local", "Where both sides sample and an in-process judge runs: local | ray (a Ray cluster; a "
                      "judge behind --base-url stays where it is).")
    ray_address: str | None = ray_address_field()
    generate: dict[str, Any] = opt({}, "Other GenerateConfig fields for both sides (--set generate.FIELD=VALUE).", cli=False)
    rank: dict[str, Any] = opt({}, "Other RankConfig fields (--set rank.FIELD=VALUE).", cli=False)

    def __post_init__(self) -> None:
        if not self.judge:
            raise ValueError("a judge is needed: --judge verify:number | python:FILE.py:FUNCTION | RM folder | template")
        if not self.baseline:
            raise ValueError("a baseline is needed: --baseline MODEL or --baseline ANSWER_COLUMN")
        check_runner(self.engine)


def baseline_kind(cfg: EvalConfig) -> tuple[str, str]:
    """("model", name) or ("column", column): a folder, `demo` or a hub name (with a '/') is a model."""
    from prefdata.run.prompts import read_rows, resolve_prompt_path

    b = str(cfg.baseline)
    if b in DEMO_ALIASES or Path(b).expanduser().exists():
        return "model", b
    rows = read_rows(resolve_prompt_path(cfg.prompts))
    columns = set().union(*(r.keys() for r in rows[:50])) if rows else set()
    if b in columns:
        return "column", b
    if "/" in b:
        return "model", b
    raise PrefdataError(
        f"--baseline {b!r} is neither a model folder nor a column of the prompt file (columns: {', '.join(sorted(columns))})"
    )


def generate_config(cfg: EvalConfig, model: str | None) -> Any:
    from prefdata.generate import GenerateConfig

    fields = {"n": 1, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed, "backend": cfg.backend,
              "engine": cfg.engine, "ray_address": cfg.ray_address, **cfg.generate}
    return GenerateConfig(prompts=cfg.prompts, prompt_field=cfg.prompt_field, reference_field=cfg.reference_field,
                          limit=cfg.limit, model=model, allow_new_config=True, **fields)


def rank_config(cfg: EvalConfig, progress: bool) -> Any:
    from prefdata.rank import RankConfig

    fields: dict[str, Any] = {name: getattr(cfg, name) for name in judge_fields(EvalConfig)}
    if cfg.engine == "ray" and cfg.judge:
        from prefdata.distributed.score import judge_engine

        fields.update(engine=judge_engine(cfg.engine, cfg.judge, cfg.base_url), ray_address=cfg.ray_address)
    fields.update(base_url=list(cfg.base_url), seed=cfg.seed, progress=progress, **cfg.rank)
    if cfg.judge_model:  # eval's own flag wins over --set rank.judge_model
        fields["judge_model"] = cfg.judge_model
    fields["kinds"] = ["sample"]  # the two sides' answers, never the reference candidates generate adds
    fields["sampler"] = "all"  # the model's and the baseline's answers are two samplers, compared on purpose
    return RankConfig(**fields)


@dataclass
class Sides:
    model_hash: str
    baseline_hash: str
    model_label: str
    baseline_label: str


def eval_generate(run: RunDir, cfg: EvalConfig, *, llm: Any = None, baseline_llm: Any = None,
                  baseline_from: RunDir | None = None, progress: bool = True) -> Sides:
    """Both sides' answers into `run`. `baseline_from`: a run that already holds the baseline's answers (copied)."""
    from prefdata.generate import generate_run, model_label, sampler_hash

    gcfg = generate_config(cfg, cfg.model)
    phash = sampler_hash(gcfg)
    kind, name = baseline_kind(cfg)
    if kind == "model":
        bcfg = generate_config(cfg, name)
        bhash = sampler_hash(bcfg)
        if bhash == phash:
            raise PrefdataError("--model and --baseline are the same model with the same settings; compare two different models")
        blabel = model_label(bcfg)
    else:
        bhash = stable_hash({"baseline_column": name}, 12)
        blabel = f"column:{name}"
    generate_run(run, gcfg, llm=llm, progress=progress)
    if kind == "model":
        if baseline_from is not None:
            _copy_candidates(baseline_from, run, bhash)
        generate_run(run, bcfg, llm=baseline_llm, progress=progress)
    else:
        _write_column_baseline(run, cfg, name, bhash)
    cands = run.read_candidates()
    assert cands is not None
    others = set(cands.filter(pl.col("kind") == "sample")["sampler_hash"].unique().to_list()) - {phash, bhash}
    if others:
        raise PrefdataError(f"{run.path} also holds answers of other models ({', '.join(sorted(others))}); "
                            "use a new --run directory for each model/baseline pair")
    return Sides(phash, bhash, model_label(gcfg), blabel)


def _copy_candidates(src: RunDir, dst: RunDir, shash: str) -> None:
    """Reuse another run's answers of one sampler config for the prompts of `dst` that lack them."""
    have = src.read_candidates()
    if have is None:
        return
    mine = dst.read_candidates()
    done = set() if mine is None else set(mine.filter(pl.col("sampler_hash") == shash)["prompt_id"].to_list())
    pids = set(dst.read_prompts()["prompt_id"].to_list())
    rows = have.filter((pl.col("sampler_hash") == shash) & pl.col("prompt_id").is_in(list(pids - done)))
    if rows.height:
        dst.write_prompts(src.read_prompts().filter(pl.col("prompt_id").is_in(rows["prompt_id"].unique().implode())))
        dst.write_candidates(rows, tag=f"{shash}-copied")


def _write_column_baseline(run: RunDir, cfg: EvalConfig, column: str, bhash: str) -> None:
    from prefdata.run.prompts import load_prompts

    pset = load_prompts(cfg.prompts, cfg.prompt_field, None, cfg.reference_field, cfg.limit)
    ids = set(pset.table["prompt_id"].to_list())
    have = run.read_candidates()
    done = set() if have is None else set(have.filter(pl.col("sampler_hash") == bhash)["prompt_id"].to_list())
    tok = _tokenizer(cfg)
    rows = []
    for r in run.read_prompts().filter(pl.col("prompt_id").is_in(list(ids - done))).iter_rows(named=True):
        value = json.loads(r["source"] or "{}").get(column)
        value = value[0] if isinstance(value, list) and value else value
        if not isinstance(value, str) or not value.strip():
            continue
        n_tok = text_tokens(tok, value) if tok is not None else None
        rows.append({"prompt_id": r["prompt_id"], "candidate_id": candidate_id(r["prompt_id"], bhash, "sample", 0),
                     "sampler_hash": bhash, "kind": "sample", "index": 0, "text": value, "finish_reason": "stop",
                     "n_tokens": n_tok, "model": f"column:{column}"})
    if rows:
        run.write_candidates(rows, tag=f"{bhash}-column")


def _tokenizer(cfg: EvalConfig) -> Any:
    """The evaluated model's tokenizer, to count the baseline column's answers in the same tokens (None if unknown)."""
    if cfg.backend == "openai":
        return None
    try:
        from transformers import AutoTokenizer

        from prefdata.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(cfg.model))
    except Exception:  # noqa: BLE001 - lengths then fall back to characters
        return None


def eval_judge(run: RunDir, cfg: EvalConfig, *, judge_llm: Any = None, judge: Any = None, progress: bool = True) -> Mapping[str, Any]:
    from prefdata.rank import rank_run

    return rank_run(run, rank_config(cfg, progress), llm=judge_llm, judge=judge)


def summarize(run: RunDir, cfg: EvalConfig, sides: Sides, rank_summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every number of the report, from the run's candidates and judgments (nothing kept elsewhere)."""
    from prefdata.judges.verifier import is_verifier
    from prefdata.rank import read_judgments, read_rankings

    jh = rank_summary["judge_hash"]
    pointwise = rank_summary["strategy"] == "scores"
    judge_kind = "verifier" if is_verifier(str(cfg.judge)) else "reward-model" if pointwise else "pairwise"
    cands = run.read_candidates(unique=True)
    assert cands is not None
    cands = cands.filter((pl.col("kind") == "sample") & pl.col("sampler_hash").is_in([sides.model_hash, sides.baseline_hash]))
    cands = cands.sort(["prompt_id", "index"])
    side_of = {sides.model_hash: "model", sides.baseline_hash: "baseline"}
    answer: dict[str, dict[str, dict[str, Any]]] = {"model": {}, "baseline": {}}
    for r in cands.iter_rows(named=True):
        answer[side_of[r["sampler_hash"]]].setdefault(r["prompt_id"], r)
    use_tokens = cands.height > 0 and cands["n_tokens"].null_count() == 0

    def length(r: dict[str, Any]) -> float:
        return float(r["n_tokens"]) if use_tokens else float(len(r["text"] or ""))

    j = read_judgments(run, jh)
    j = j if j is not None else pl.DataFrame(schema={"prompt_id": pl.String, "a_id": pl.String, "b_id": pl.String,
                                                     "verdict": pl.String, "winner_id": pl.String, "score": pl.Float64,
                                                     "created": pl.Float64, "error": pl.String})
    j = j.sort("created")
    refs = dict(zip(*run.read_prompts().select(["prompt_id", "reference"]).to_dict(as_series=False).values(), strict=True))
    eval_ids = _eval_prompt_ids(cfg)
    for s in answer:
        answer[s] = {p: r for p, r in answer[s].items() if p in eval_ids}
    paired = sorted(set(answer["model"]) & set(answer["baseline"]))
    out: dict[str, Any] = {
        "judge": cfg.judge, "judge_kind": judge_kind, "judge_hash": jh, "model": sides.model_label,
        "baseline": sides.baseline_label, "model_sampler": sides.model_hash, "baseline_sampler": sides.baseline_hash,
        "prompts": len(eval_ids), "prompts_answered_by_both": len(paired),
        "length_unit": "tokens" if use_tokens else "characters",
        "len_mean": _mean([length(answer["model"][p]) for p in paired]),
        "baseline_len_mean": _mean([length(answer["baseline"][p]) for p in paired]),
        "truncated": sum(answer["model"][p]["finish_reason"] == "length" for p in paired),
        "baseline_truncated": sum(answer["baseline"][p]["finish_reason"] == "length" for p in paired),
    }
    outcomes: dict[str, float] = {}
    if pointwise:
        # scores from the rankings: identical answers in a prompt are scored once and share the score there
        score_of: dict[str, float] = {}
        rk = read_rankings(run, jh)
        for r in ([] if rk is None else rk.iter_rows(named=True)):
            score_of.update({c: v for c, v in zip(r["candidate_ids"], r["scores"], strict=True) if v is not None})
        if judge_kind == "verifier":
            out["prompts_without_reference"] = sum(refs.get(p) is None for p in paired)
        side_vals = {side: [score_of[answer[side][p]["candidate_id"]] for p in paired
                            if answer[side][p]["candidate_id"] in score_of] for side in answer}
        # accuracy only when both sides' scores are all 0/1: decided per side, a 0/1/2 verifier gave one side an
        # "accuracy" and the other a mean score, and the table compared nothing
        binary = judge_kind == "verifier" and all(v in (0.0, 1.0) for vals in side_vals.values() for v in vals)
        for side, prefix in (("model", ""), ("baseline", "baseline_")):
            vals = side_vals[side]
            out[f"{prefix}scored"] = len(vals)
            out[f"{prefix}failures"] = sum(
                1 for p in paired if answer[side][p]["candidate_id"] not in score_of
                and not (judge_kind == "verifier" and refs.get(p) is None))
            m, lo, hi = mean_interval(vals)
            out[f"{prefix}mean_score"], out[f"{prefix}mean_score_low"], out[f"{prefix}mean_score_high"] = m, lo, hi
            if binary and vals:
                acc = sum(vals) / len(vals)
                lo, hi = wilson(acc, len(vals))
                out[f"{prefix}accuracy"], out[f"{prefix}accuracy_low"], out[f"{prefix}accuracy_high"] = acc, lo, hi
        for p in paired:
            a, b = score_of.get(answer["model"][p]["candidate_id"]), score_of.get(answer["baseline"][p]["candidate_id"])
            if a is not None and b is not None:
                outcomes[p] = 1.0 if a > b else 0.0 if a < b else 0.5
        out["wins"] = sum(v == 1.0 for v in outcomes.values())
        out["losses"] = sum(v == 0.0 for v in outcomes.values())
        out["ties"] = sum(v == 0.5 for v in outcomes.values())
    else:
        ok = j.filter(pl.col("verdict").is_in(["a", "b", "tie"]))
        calls: dict[str, list[float]] = {}
        mp = {p: answer["model"][p]["candidate_id"] for p in paired}
        bp = {p: answer["baseline"][p]["candidate_id"] for p in paired}
        for r in ok.iter_rows(named=True):
            p = r["prompt_id"]
            if p not in mp or {r["a_id"], r["b_id"]} != {mp[p], bp[p]}:
                continue
            calls.setdefault(p, []).append(1.0 if r["winner_id"] == mp[p] else 0.0 if r["winner_id"] == bp[p] else 0.5)
        identical = 0
        for p in paired:
            if answer["model"][p]["text"] == answer["baseline"][p]["text"]:
                identical += 1
                calls[p] = [0.5, 0.5]  # identical answers tie without a judge call
        flat = [v for vs in calls.values() for v in vs]
        keys_ok = {(r["prompt_id"], r["a_id"], r["b_id"]) for r in ok.iter_rows(named=True)}
        keys_failed = {(r["prompt_id"], r["a_id"], r["b_id"]) for r in j.filter(pl.col("verdict") == "fail").iter_rows(named=True)
                       if r["prompt_id"] in mp}
        out.update(wins=sum(v == 1.0 for v in flat), losses=sum(v == 0.0 for v in flat), ties=sum(v == 0.5 for v in flat),
                   judge_calls=len(flat) - 2 * identical, identical_answers=identical, failures=len(keys_failed - keys_ok))
        outcomes = {p: sum(vs) / len(vs) for p, vs in calls.items() if vs}
    n = len(outcomes)
    out["compared"] = n
    if n:
        wr = sum(outcomes.values()) / n
        lo, hi = wilson(wr, n)
        out.update(win_rate=wr, win_rate_low=lo, win_rate_high=hi)
        diffs = [length(answer["model"][p]) - length(answer["baseline"][p]) for p in outcomes]
        fit = length_controlled_win_rate(list(outcomes.values()), diffs)
        if fit is not None and not fit.exists:  # all wins or all losses: no finite fit, say so rather than print [0, 1]
            out["lc_no_fit"] = f"no finite fit: the model {'won' if fit.lc_win_rate > 0.5 else 'lost'} every prompt"
        elif fit is not None:
            out.update(lc_win_rate=fit.lc_win_rate, lc_win_rate_low=fit.low, lc_win_rate_high=fit.high,
                       lc_length_slope=fit.slope, lc_length_scale=fit.scale)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _eval_prompt_ids(cfg: EvalConfig) -> set[str]:
    from prefdata.run.prompts import load_prompts

    return set(load_prompts(cfg.prompts, cfg.prompt_field, None, cfg.reference_field, cfg.limit).table["prompt_id"].to_list())


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def eval_run(run: RunDir, cfg: EvalConfig, *, llm: Any = None, baseline_llm: Any = None, judge_llm: Any = None,
             judge: Any = None, baseline_from: RunDir | None = None, progress: bool = True) -> EvalSummary:
    """Generate both sides, judge, write eval.json / eval.md; returns the summary. Rerun to resume."""
    if cfg.engine == "ray":  # one Ray for both sides and the judge, not one per stage
        from prefdata.distributed.cluster import import_ray, ray_cluster

        if not import_ray().is_initialized():
            with ray_cluster(cfg.ray_address):
                return eval_run(run, cfg, llm=llm, baseline_llm=baseline_llm, judge_llm=judge_llm, judge=judge,
                                baseline_from=baseline_from, progress=progress)
    sides = eval_generate(run, cfg, llm=llm, baseline_llm=baseline_llm, baseline_from=baseline_from, progress=progress)
    rs = eval_judge(run, cfg, judge_llm=judge_llm, judge=judge, progress=progress)
    return finish(run, cfg, sides, rs)


def finish(run: RunDir, cfg: EvalConfig, sides: Sides, rank_summary: Mapping[str, Any]) -> EvalSummary:
    summary = summarize(run, cfg, sides, rank_summary)
    atomic_write_bytes(run.path / "eval.json", (json.dumps(summary, indent=2) + "\n").encode())
    atomic_write_bytes(run.path / "eval.md", ("\n".join(markdown(summary)) + "\n").encode())
    run.record_stage("eval", stable_hash([sides.model_hash, sides.baseline_hash, summary["judge_hash"]], 12),
                     {"config": dataclasses.asdict(cfg), "summary": summary})
    return EvalSummary(summary, str(run.path))


@dataclass(eq=False)
class EvalSummary(RecordSummary):
    """eval.json's record (its measures depend on the judge) and the run directory that holds it."""

    run: str

    def lines(self) -> list[str]:
        s = self.record
        rows = [("", "model", "baseline"), *table_rows(s)]
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out = [f"eval: {s['model']} vs {s['baseline']}, judge {s['judge']} ({s['compared']} of {s['prompts']} prompts compared)"]
        out += [f"  {a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
        if s.get("prompts_without_reference"):
            out.append(f"  skipped {s['prompts_without_reference']} prompts without a reference answer")
        run = Path(self.run)
        return [*out, f"summary: {run / 'eval.json'}, {run / 'eval.md'}"]


def _ci(s: dict[str, Any], key: str) -> str:
    v = s.get(key)
    if v is None:
        return "–"
    lo, hi = s.get(f"{key}_low"), s.get(f"{key}_high")
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{v:.3f}"


def table_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, model, baseline) rows of the report."""
    rows: list[tuple[str, str, str]] = []
    if s.get("accuracy") is not None or s.get("baseline_accuracy") is not None:
        rows.append(("accuracy (95% CI)", _ci(s, "accuracy"), _ci(s, "baseline_accuracy")))
    if s["judge_kind"] != "pairwise":  # always: the one measure every pointwise judge has on both sides
        rows.append(("mean score (95% CI)", _ci(s, "mean_score"), _ci(s, "baseline_mean_score")))
    unit = s["length_unit"]
    rows.append((f"mean length ({unit})", _num(s.get("len_mean")), _num(s.get("baseline_len_mean"))))
    how = "both orders, ties ½" if s["judge_kind"] == "pairwise" else "by score, ties ½"
    rows.append((f"win rate vs baseline ({how})", _ci(s, "win_rate"), ""))
    lc = f"{s['lc_no_fit']}; raw win rate {_ci(s, 'win_rate')}" if s.get("lc_no_fit") else _ci(s, "lc_win_rate")
    rows.append(("length-controlled win rate", lc, ""))
    rows.append(("wins / ties / losses", f"{s.get('wins', 0)} / {s.get('ties', 0)} / {s.get('losses', 0)}", ""))
    return rows


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:.1f}"


def markdown(s: dict[str, Any]) -> list[str]:
    lines = [f"# Eval: {s['model']} vs {s['baseline']}", "",
             f"Judge `{s['judge']}` ({s['judge_kind']}, hash `{s['judge_hash']}`); {s['prompts']} prompts, "
             f"{s['compared']} compared.", "", "| measure | model | baseline |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in table_rows(s)]
    notes = []
    if s.get("prompts_without_reference"):
        notes.append(f"{s['prompts_without_reference']} prompts without a reference answer were skipped.")
    if s.get("failures") or s.get("baseline_failures"):
        notes.append(f"judge failures: model {s.get('failures', 0)}, baseline {s.get('baseline_failures', 0)}.")
    if s.get("identical_answers"):
        notes.append(f"{s['identical_answers']} prompts had identical answers (ties without a judge call).")
    if notes:
        lines += [""] + notes
    lines += ["", "Intervals: Wilson 95% over prompts. Length-controlled win rate: logistic regression of the outcome "
              "on tanh(length difference / its sd), predicted at zero difference; not comparable with AlpacaEval's (see README)."]
    return lines


__all__ = ["EvalConfig", "EvalSummary", "Sides", "eval_generate", "eval_judge", "eval_run", "finish", "summarize"]
