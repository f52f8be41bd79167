"""Export's tables for one group of prompts, built with polars expressions (issue 13).

`build_group` turns one group's rankings, prompts, candidates and direct verdicts into the rows of a dataset
shape and the counts the summary needs. The rules are the ones of `tests/pairs.py` (which stays the reference,
one prompt at a time), written as joins and expressions over the whole group:

- a candidate table (one row per ranked candidate: its rank, score, text and flags), exploded from the rankings;
- a pair table for the strategy (best-worst: a lookup of best and worst; best-vs-each, all, adjacent: self-joins
  on the stable rank order), holding candidate row numbers, not texts, so `all` stays small;
- the drop reason of every pair as one `when/then` chain, in the order `pair_drop_reason` checks them;
- texts and prompts are gathered only for the rows being written, a chunk at a time.

Drop counts come with the position of their first occurrence (prompt order, then place within the prompt), so
the merged counts list the reasons in the order the per-prompt loop met them (the card shows that order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl

from prefdata.run.records import MESSAGES

PAIR_STRATEGIES = ("best-worst", "best-vs-each", "all", "adjacent")
# Strategies that need every candidate's position, not just the best and the worst.
NEEDS_FULL_ORDER = frozenset({"best-vs-each", "all", "adjacent"})

# Drop reasons, in the order the filters run; the card lists them in this order.
DROP_REASONS: dict[str, str] = {
    "judge_failed": "prompt skipped: its ranking rests on a failed judge call (a rerun of `prefdata rank` retries it)",
    "no_preference": "no strict preference between best and worst (all tied or failed)",
    "tie": "the two candidates share a rank",
    "inconsistent": "the direct comparison of the two did not consistently prefer the chosen one",
    "truncated": "a completion hit the token limit (finish_reason=length)",
    "judge_input_truncated": "the reward model scored a cut input (longer than --rm-max-length, cut from the left)",
    "identical_text": "chosen and rejected texts are identical",
    "margin_unknown": "--min-margin is set but the pair has no scores",
    "below_margin": "score margin below --min-margin",
    "ambiguous_label": "KTO: the candidate is chosen in one kept pair and rejected in another",
    "too_few_candidates": "ranking shape: fewer than two candidates left after filtering",
}

# str.strip()'s whitespace: every c with c.isspace() (polars' default strip differs on \x1c..\x1f); a test checks it.
SPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Candidate columns export copies into rows, with the types they are written with.
CAND_FIELDS: dict[str, pl.DataType] = {
    "text": pl.String(),
    "finish_reason": pl.String(),
    "n_tokens": pl.Int64(),
    "sampler_hash": pl.String(),
    "kind": pl.String(),
    "model": pl.String(),
}
LAST = 1 << 62  # a place after every candidate and pair of a prompt
UNRANKED = 1 << 30  # where a candidate without a rank sorts in the ranking shape (as before)


@dataclass
class GroupInput:
    """One group of prompts, read from the run."""

    rankings: pl.DataFrame  # in prompt order; _order, prompt_id, judge_hash, strategy, candidate_ids, ranks, ...
    prompts: pl.DataFrame  # prompt_id, messages (MESSAGES), reference: one row per prompt of the group
    candidates: pl.DataFrame  # candidate_id + CAND_FIELDS, one row per id
    verdicts: pl.DataFrame | None  # prompt_id, a_id, b_id, verdict, winner_id, content_key (direct judge calls)
    cut: pl.DataFrame  # prompt_id, a_id: reward-model inputs cut to the max length (empty: none, or kept)


@dataclass
class GroupTables:
    """What one group contributes: rows to write (in chunks) and the counts behind the summary."""

    n_rows: int
    n_considered: int
    n_multi_turn: int  # rows whose prompt is not one message (the string shape refuses them)
    events: dict[str, tuple[int, tuple[int, int]]]  # drop reason -> (count, first place)
    lengths: pl.DataFrame  # c_tokens, r_tokens, c_chars, r_chars of every kept pair
    samplers: set[str]
    chunks: Iterator[pl.DataFrame] = field(default_factory=lambda: iter(()))  # rows + "_test", in file order


def build_group(g: GroupInput, *, pairs: str, shape: str, min_margin: float, keep_truncated: bool,
                keep_inconsistent: bool, test_ids: set[str], judge_hash: str, chunk_rows: int,
                chars: bool = True) -> GroupTables:  # fmt: skip
    """The rows and counts of one group (see the module docstring). `chars`: count the texts' characters (the
    lengths' fallback measure; not needed when every candidate of the run has a token count)."""
    rk = g.rankings.with_row_index("_p")
    prompt = rk.select("prompt_id").join(g.prompts, on="prompt_id", how="left", maintain_order="left")
    msgs = prompt["messages"].fill_null(pl.lit([], dtype=MESSAGES))
    is_test = pl.Series("_test", [p in test_ids for p in rk["prompt_id"].to_list()], dtype=pl.Boolean)
    failed = rk["failures"].fill_null(0) > 0
    events: dict[str, tuple[int, tuple[int, int]]] = {}
    n_failed = int(failed.sum())
    if n_failed:
        _event(events, "judge_failed", n_failed, (int(rk.filter(failed)["_order"].min()), 0))  # type: ignore[arg-type]
    ok = rk.filter(~failed)
    cands = _candidate_table(ok, g, keep_truncated, exact_tid=shape == "ranking", chars=chars)
    meta = _Meta(rk, msgs, is_test, cands, shape, pairs)
    if shape == "ranking":
        return _ranking_group(ok, cands, meta, events, keep_truncated, chunk_rows)

    table, n_nopref, nopref_first = _pair_table(ok, cands, pairs)
    n_considered = n_failed + table.height + n_nopref
    if n_nopref:
        _event(events, "no_preference", n_nopref, (nopref_first, 0))
    ties = table.filter(pl.col("tie"))
    if ties.height:
        _event(events, "tie", ties.height, (int(ties["_order"].min()), 0))  # type: ignore[arg-type]
    table = table.filter(~pl.col("tie")).with_row_index("_k")
    table = _with_sides(table, cands)
    verdicts = None if keep_inconsistent else _direct_verdicts(g, cands, judge_hash)
    table = table.with_columns(_reason(table, verdicts, min_margin, keep_truncated).alias("_reason"))
    dropped = (
        table.filter(pl.col("_reason").is_not_null())
        .group_by("_reason", maintain_order=True)
        .agg(pl.len(), pl.col("_order").first(), pl.col("_k").first())
    )
    for reason, n, order, k in dropped.iter_rows():
        _event(events, reason, n, (order, 1 + k))
    kept = table.filter(pl.col("_reason").is_null()).drop("_reason")
    lengths = kept.select(
        c_tokens="c_n_tokens", r_tokens="r_n_tokens", c_chars="c_chars", r_chars="r_chars"
    )
    if shape == "kto":
        rows, ambiguous = _kto_table(kept)
        if ok.height:
            _event(events, "ambiguous_label", ambiguous, (int(ok["_order"].min()), LAST))  # type: ignore[arg-type]
        samplers = _samplers(cands["sampler_hash"].gather(rows["ci"]))
        return GroupTables(rows.height, n_considered, 0, events, lengths, samplers,
                           meta.kto_chunks(rows, chunk_rows))  # fmt: skip
    turns = msgs.list.len().gather(kept["_p"])
    samplers = _samplers(kept["c_sampler_hash"]) | _samplers(kept["r_sampler_hash"])
    return GroupTables(kept.height, n_considered, int((turns != 1).sum()), events, lengths, samplers,
                       meta.pair_chunks(kept, chunk_rows))  # fmt: skip


def _event(events: dict[str, tuple[int, tuple[int, int]]], reason: str, n: int, first: tuple[int, int]) -> None:
    old = events.get(reason)
    events[reason] = (n, first) if old is None else (old[0] + n, min(old[1], first))


def merge_events(into: dict[str, tuple[int, tuple[int, int]]], more: dict[str, tuple[int, tuple[int, int]]]) -> None:
    for reason, (n, first) in more.items():
        _event(into, reason, n, first)


def _samplers(s: pl.Series) -> set[str]:
    return {h for h in s.drop_nulls().unique().to_list() if h}


# -- tables -----------------------------------------------------------------------------------------


def _candidate_table(ok: pl.DataFrame, g: GroupInput, keep_truncated: bool, exact_tid: bool,
                     chars: bool = True) -> pl.DataFrame:  # fmt: skip
    """One row per ranked candidate of the group's final rankings: its rank and score from the ranking, its
    fields from candidates/, `_cut` (reward-model input cut), `chars` (null unless `chars`), and with
    `exact_tid`, `tid`: the stripped text's id (equal ids exactly when the stripped texts are equal); else
    `_sp`: whether the text starts or ends with a space (`_identical` strips only those)."""
    c = (
        ok.select("_p", "_order", "prompt_id", "candidate_ids", "ranks", "scores", "score_stderr")
        .with_columns(pl.int_ranges(0, pl.col("candidate_ids").list.len()).alias("pos"))
        .explode("candidate_ids", "pos")
        .filter(pl.col("pos").is_not_null())
        .with_columns(
            pl.col("ranks").list.get(pl.col("pos"), null_on_oob=True).alias("rank"),
            pl.col("scores").list.get(pl.col("pos"), null_on_oob=True).alias("score"),
            pl.col("score_stderr").list.get(pl.col("pos"), null_on_oob=True).alias("stderr"),
        )
        .drop("ranks", "scores", "score_stderr")
        .rename({"candidate_ids": "cid"})
        .join(g.candidates, left_on="cid", right_on="candidate_id", how="left", maintain_order="left")
        .with_columns(pl.col("text").fill_null(""))
    )
    if not keep_truncated and g.cut.height:
        cut = g.cut.select("prompt_id", pl.col("a_id").alias("cid"), pl.lit(True).alias("_cut"))
        c = c.join(cut, on=["prompt_id", "cid"], how="left", maintain_order="left")
        c = c.with_columns(pl.col("_cut").fill_null(False))
    else:
        c = c.with_columns(pl.lit(False).alias("_cut"))
    text = pl.col("text")
    if exact_tid:
        tid = text.str.strip_chars(SPACE).rank("dense").cast(pl.UInt64).alias("tid")
    else:
        tid = (text.str.head(1).is_in(list(SPACE)) | text.str.tail(1).is_in(list(SPACE))).alias("_sp")
    n_chars = text.str.len_chars().cast(pl.Int64) if chars else pl.lit(None, dtype=pl.Int64)
    return c.with_columns(tid, n_chars.alias("chars")).with_row_index("_ci")


def _pair_table(ok: pl.DataFrame, cands: pl.DataFrame, strategy: str) -> tuple[pl.DataFrame, int, int]:
    """(chosen row `a`, rejected row `b`, tie) per pair the strategy forms, in the per-prompt loop's order;
    the prompts without a preference (their count and the first one's order)."""
    cols = ["_p", "_order", "_s1", "_s2", "a", "b", "tie"]
    side = cands.select("_p", "cid", "_ci", "rank")  # an id listed twice in a ranking: its last place counts
    if strategy == "best-worst":
        key = side.unique(["_p", "cid"], keep="last", maintain_order=True)
        b = ok.select("_p", "_order", "best_id", "worst_id")
        strict = pl.col("best_id").is_not_null() & pl.col("worst_id").is_not_null() & (pl.col("best_id") != pl.col("worst_id"))
        nopref = b.filter(~strict)
        t = (
            b.filter(strict)
            .join(key.select("_p", pl.col("cid").alias("best_id"), pl.col("_ci").alias("a")), on=["_p", "best_id"],
                  maintain_order="left")
            .join(key.select("_p", pl.col("cid").alias("worst_id"), pl.col("_ci").alias("b")), on=["_p", "worst_id"],
                  maintain_order="left")
            .with_columns(pl.lit(0).alias("_s1"), pl.lit(0).alias("_s2"), pl.lit(False).alias("tie"))
        )  # fmt: skip
        return t.select(cols), nopref.height, _first_order(nopref)
    order = cands.select("_p", "_order", "cid", "_ci", "rank", "pos").sort("_p", "rank", "pos")
    # place within the prompt: row number minus the prompt's first row (rows sorted by prompt; no window)
    start = pl.col("_p").search_sorted(pl.col("_p"), side="left")
    order = order.with_columns((pl.int_range(pl.len()) - start).cast(pl.Int64).alias("_i"))
    if strategy == "best-vs-each":
        best = ok.select("_p", "best_id")
        bk = side.join(best, on="_p", maintain_order="left").filter(pl.col("cid") == pl.col("best_id"))
        bk = bk.unique(["_p", "cid"], keep="last", maintain_order=True)
        bk = bk.select("_p", "best_id", pl.col("_ci").alias("_bci"), pl.col("rank").alias("_br"))
        nopref = ok.join(bk, on="_p", how="anti", maintain_order="left")
        t = order.join(bk, on="_p", maintain_order="left").filter(pl.col("cid") != pl.col("best_id"))
        first = pl.col("_br") < pl.col("rank")
        t = t.with_columns(
            pl.when(first).then(pl.col("_bci")).otherwise(pl.col("_ci")).alias("a"),
            pl.when(first).then(pl.col("_ci")).otherwise(pl.col("_bci")).alias("b"),
            (pl.col("_br") == pl.col("rank")).alias("tie"),
            pl.col("_i").alias("_s1"),
            pl.lit(0).alias("_s2"),
        )
        return t.select(cols).sort("_p", "_s1"), nopref.height, _first_order(nopref)
    left = order.select("_p", "_order", "_i", pl.col("_ci").alias("_x"), pl.col("rank").alias("_rx"))
    right = order.select("_p", pl.col("_i").alias("_j"), pl.col("_ci").alias("_y"), pl.col("rank").alias("_ry"))
    if strategy == "all":
        t = left.join(right, on="_p").filter(pl.col("_i") < pl.col("_j"))
    else:  # adjacent
        t = left.join(right.with_columns(pl.col("_j") - 1), left_on=["_p", "_i"], right_on=["_p", "_j"])
        t = t.with_columns((pl.col("_i") + 1).alias("_j"))
    second = pl.col("_ry") < pl.col("_rx")  # never after a stable sort by rank; kept as the rule says
    t = t.with_columns(
        pl.when(second).then(pl.col("_y")).otherwise(pl.col("_x")).alias("a"),
        pl.when(second).then(pl.col("_x")).otherwise(pl.col("_y")).alias("b"),
        (pl.col("_rx") == pl.col("_ry")).alias("tie"),
        pl.col("_i").alias("_s1"),
        pl.col("_j").alias("_s2"),
    )
    return t.select(cols).sort("_p", "_s1", "_s2"), 0, 0


def _first_order(df: pl.DataFrame) -> int:
    return int(df["_order"].min()) if df.height else 0  # type: ignore[arg-type]


SIDE_COLS = ("cid", "rank", "score", "stderr", "finish_reason", "_cut", "_sp", "n_tokens", "chars", "sampler_hash")


def _with_sides(t: pl.DataFrame, cands: pl.DataFrame) -> pl.DataFrame:
    side = cands.select(SIDE_COLS)
    c = side.gather(t["a"]).rename({k: f"c_{k}" for k in SIDE_COLS})
    r = side.gather(t["b"]).rename({k: f"r_{k}" for k in SIDE_COLS})
    pid = cands.select("prompt_id").gather(t["a"])
    out = pl.concat([t, pid, c, r], how="horizontal")
    return out.with_columns(_identical(out, cands))


def _identical(t: pl.DataFrame, cands: pl.DataFrame) -> pl.Series:
    """Whether chosen and rejected have the same stripped text: the texts compared as they are (mostly by their
    lengths and first bytes alone), then stripped where either starts or ends with a space."""
    text = cands["text"]
    same = (text.gather(t["a"]) == text.gather(t["b"])).alias("_same")
    idx = (~same & (t["c__sp"] | t["r__sp"])).arg_true()
    if idx.len():
        a = text.gather(t["a"].gather(idx)).str.strip_chars(SPACE)
        b = text.gather(t["b"].gather(idx)).str.strip_chars(SPACE)
        same = same.scatter(idx, a == b)
    return same


def _direct_verdicts(g: GroupInput, cands: pl.DataFrame, judge_hash: str) -> pl.DataFrame | None:
    """Per (prompt, unordered pair of ranked candidates): the direct calls (`_n`) and how many the lower and the
    higher id won. Failed calls and pointwise rows say nothing; a call whose content key shows it judged other
    texts than the candidates have now is left out."""
    v = g.verdicts
    if v is None or v.height == 0:
        return None
    v = v.filter(
        (pl.col("a_id").fill_null("") != "") & (pl.col("b_id").fill_null("") != "") & (pl.col("a_id") != pl.col("b_id"))
        & pl.col("verdict").is_in(["a", "b", "tie"])
    )  # fmt: skip
    ranked = cands.select("prompt_id", "cid", "_ci", "text")
    v = v.join(ranked.rename({"cid": "a_id", "_ci": "_a", "text": "_at"}), on=["prompt_id", "a_id"], maintain_order="left")
    v = v.join(ranked.rename({"cid": "b_id", "_ci": "_b", "text": "_bt"}), on=["prompt_id", "b_id"], maintain_order="left")
    keyed = v.filter(pl.col("content_key").is_not_null())
    if keyed.height:  # per call (the content key is a JSON dump and a hash: Python's)
        from prefdata.run.records import content_key

        ctx = {r["prompt_id"]: (r["messages"] or [], r.get("reference")) for r in g.prompts.iter_rows(named=True)}
        current = [
            key == content_key(judge_hash, ctx[pid][0], ctx[pid][1], at or "", bt or "")
            for pid, key, at, bt in keyed.select("prompt_id", "content_key", "_at", "_bt").iter_rows()
        ]
        stale = keyed.filter(~pl.Series(current, dtype=pl.Boolean)).select("_a", "_b", "content_key")
        v = v.join(stale.unique(), on=["_a", "_b", "content_key"], how="anti", maintain_order="left", nulls_equal=True)
    winner = (
        pl.when(pl.col("verdict") == "tie")
        .then(None)
        .when(pl.col("winner_id").fill_null("") != "")
        .then(pl.col("winner_id"))
        .when(pl.col("verdict") == "a")
        .then(pl.col("a_id"))
        .otherwise(pl.col("b_id"))
    )
    lo = pl.min_horizontal("a_id", "b_id")
    hi = pl.max_horizontal("a_id", "b_id")
    v = v.select("prompt_id", lo.alias("_lo"), hi.alias("_hi"), winner.alias("_w"))
    return v.group_by("prompt_id", "_lo", "_hi").agg(
        pl.len().alias("_n"),
        (pl.col("_w") == pl.col("_lo")).fill_null(False).sum().alias("_n_lo"),
        (pl.col("_w") == pl.col("_hi")).fill_null(False).sum().alias("_n_hi"),
    )


def _reason(t: pl.DataFrame, verdicts: pl.DataFrame | None, min_margin: float, keep_truncated: bool) -> pl.Series:
    """`pair_drop_reason` for every pair at once (None: kept)."""
    df = t.select("prompt_id", "c_cid", "r_cid", "c_score", "r_score", "c_stderr", "r_stderr", "c_finish_reason",
                  "r_finish_reason", "c__cut", "r__cut", "_same")  # fmt: skip
    inconsistent: pl.Expr = pl.lit(False)
    if verdicts is not None and verdicts.height:
        lo, hi = pl.min_horizontal("c_cid", "r_cid"), pl.max_horizontal("c_cid", "r_cid")
        df = df.with_columns(lo.alias("_lo"), hi.alias("_hi"))
        df = df.join(verdicts, on=["prompt_id", "_lo", "_hi"], how="left", maintain_order="left")
        won = pl.when(pl.col("c_cid") == pl.col("_lo")).then(pl.col("_n_lo")).otherwise(pl.col("_n_hi"))
        inconsistent = (pl.col("_n").is_not_null() & (won < pl.col("_n"))).fill_null(False)
    margin = pl.col("c_score") - pl.col("r_score")
    expr = pl.when(inconsistent).then(pl.lit("inconsistent"))
    if not keep_truncated:
        length = (pl.col("c_finish_reason") == "length").fill_null(False) | (pl.col("r_finish_reason") == "length").fill_null(False)
        expr = expr.when(length).then(pl.lit("truncated"))
        expr = expr.when(pl.col("c__cut") | pl.col("r__cut")).then(pl.lit("judge_input_truncated"))
    expr = expr.when(pl.col("_same")).then(pl.lit("identical_text"))
    if min_margin > 0:
        expr = expr.when(margin.is_null()).then(pl.lit("margin_unknown"))
        # sort rankings carry each strength's standard error: the margin is then in standard errors of the gap
        se = (pl.col("c_stderr") * pl.col("c_stderr") + pl.col("r_stderr") * pl.col("r_stderr")).sqrt()
        need = pl.when(se.is_not_null()).then(min_margin * se).otherwise(pl.lit(min_margin))
        expr = expr.when(margin < need).then(pl.lit("below_margin"))
    return df.select(expr.otherwise(pl.lit(None, dtype=pl.String)).alias("_reason"))["_reason"]


def _kto_table(kept: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Unpaired rows: a kept pair's chosen is desirable, its rejected undesirable; both at once is ambiguous.
    Rows follow each candidate's first appearance in the prompt's kept pairs."""
    k = kept.select("_p", "_k", "a", "b", "c_cid", "r_cid")
    sides = pl.concat([
        k.select("_p", pl.col("a").alias("ci"), pl.col("c_cid").alias("cid"), pl.lit(True).alias("label"),
                 (2 * pl.col("_k")).alias("_sub")),
        k.select("_p", pl.col("b").alias("ci"), pl.col("r_cid").alias("cid"), pl.lit(False).alias("label"),
                 (2 * pl.col("_k") + 1).alias("_sub")),
    ])  # fmt: skip
    per = sides.group_by("_p", "cid").agg(
        pl.col("_sub").min(),
        pl.col("ci").sort_by("_sub").last(),
        pl.col("label").n_unique().alias("_nl"),
        pl.col("label").first(),
    )
    rows = per.filter(pl.col("_nl") == 1).sort("_p", "_sub").select("_p", "ci", "label")
    return rows, int((per["_nl"] > 1).sum())


def _ranking_group(ok: pl.DataFrame, cands: pl.DataFrame, meta: _Meta, events: dict[str, tuple[int, tuple[int, int]]],
                   keep_truncated: bool, chunk_rows: int) -> GroupTables:  # fmt: skip
    """The ranking shape: one row per prompt with its candidates best first, truncated ones left out."""
    c = cands
    if not keep_truncated:
        reason = (
            pl.when((pl.col("finish_reason") == "length").fill_null(False))
            .then(pl.lit("truncated"))
            .when(pl.col("_cut"))
            .then(pl.lit("judge_input_truncated"))
            .otherwise(pl.lit(None, dtype=pl.String))
        )
        c = c.with_columns(reason.alias("_reason"))
        dropped = (
            c.filter(pl.col("_reason").is_not_null())
            .group_by("_reason", maintain_order=True)
            .agg(pl.len(), pl.col("_order").first(), pl.col("_ci").first())
        )
        for r, n, order, ci in dropped.iter_rows():
            _event(events, r, n, (order, 1 + ci))
        c = c.filter(pl.col("_reason").is_null())
    keep = c.with_columns(pl.col("rank").fill_null(UNRANKED).alias("_rk")).sort("_p", "_rk", "pos")
    lists = keep.group_by("_p", maintain_order=True).agg(
        pl.len().alias("_n"),
        pl.col("tid").n_unique().alias("_nd"),
        pl.col("rank").n_unique().alias("_nr"),
        pl.col("text").alias("completions"),
        pl.col("cid").alias("candidate_ids"),
        pl.col("rank").alias("ranks"),
        pl.col("score").alias("scores"),
        pl.col("stderr").alias("score_stderrs"),
        pl.col("finish_reason").alias("finish_reasons"),
        pl.col("n_tokens").alias("n_tokens"),
        pl.col("kind").alias("kinds"),
        pl.col("sampler_hash").alias("sampler_hashes"),
    )
    good = lists.filter((pl.col("_n") >= 2) & (pl.col("_nd") >= 2) & (pl.col("_nr") >= 2)).drop("_n", "_nd", "_nr")
    few = ok.join(good.select("_p"), on="_p", how="anti")
    if few.height:
        _event(events, "too_few_candidates", few.height, (_first_order(few), LAST))
    ends = (
        cands.filter(pl.col("rank").is_not_null())
        .sort("_p", "rank", "pos")
        .group_by("_p", maintain_order=True)
        .agg(
            pl.col("n_tokens").first().alias("c_tokens"),
            pl.col("n_tokens").last().alias("r_tokens"),
            pl.col("chars").first().alias("c_chars"),
            pl.col("chars").last().alias("r_chars"),
        )
    )
    lengths = good.select("_p").join(ends, on="_p", how="left", maintain_order="left").drop("_p")
    samplers = _samplers(good["sampler_hashes"].explode())
    return GroupTables(good.height, 0, 0, events, lengths, samplers, meta.ranking_chunks(good, chunk_rows))


class _Meta:
    """Gathers prompts, texts and ranking fields into output rows, a chunk at a time."""

    def __init__(self, rk: pl.DataFrame, msgs: pl.Series, is_test: pl.Series, cands: pl.DataFrame, shape: str,
                 pairs: str) -> None:  # fmt: skip
        self.rk, self.msgs, self.is_test, self.cands, self.shape, self.pairs = rk, msgs, is_test, cands, shape, pairs

    def _per_prompt(self, p: pl.Series, *cols: str) -> list[pl.Series]:
        return [self.rk[c].gather(p) for c in cols]

    def pair_chunks(self, kept: pl.DataFrame, n: int) -> Iterator[pl.DataFrame]:
        for start in range(0, kept.height, n):
            k = kept.slice(start, n)
            p = k["_p"]
            m = self.msgs.gather(p)
            turns = m.list.len()
            ct, rt = self.cands["text"].gather(k["a"]), self.cands["text"].gather(k["b"])
            if self.shape == "string":
                first = m.list.first().struct.field("content")
                prompt = pl.select(pl.when(turns == 1).then(first).otherwise(None)).to_series()
                chosen, rejected = ct, rt
            else:
                prompt, chosen, rejected = m, _assistant(ct), _assistant(rt)
            side = self.cands.select("model", "kind", "sampler_hash")
            cs, rs = side.gather(k["a"]), side.gather(k["b"])
            pid, jh, st = self._per_prompt(p, "prompt_id", "judge_hash", "strategy")
            yield pl.DataFrame([
                pid, prompt.alias("prompt"), chosen.alias("chosen"), rejected.alias("rejected"),
                k["c_cid"].alias("chosen_id"), k["r_cid"].alias("rejected_id"), k["c_score"].alias("chosen_score"),
                k["r_score"].alias("rejected_score"), (k["c_score"] - k["r_score"]).alias("margin"),
                k["c_rank"].alias("chosen_rank"), k["r_rank"].alias("rejected_rank"), jh, st,
                pl.repeat(self.pairs, k.height, eager=True).alias("pair_strategy"),
                cs["sampler_hash"], rs["sampler_hash"].alias("rejected_sampler_hash"),
                cs["model"].alias("chosen_model"), rs["model"].alias("rejected_model"),
                cs["kind"].alias("chosen_kind"), rs["kind"].alias("rejected_kind"),
                k["c_n_tokens"].alias("chosen_tokens"), k["r_n_tokens"].alias("rejected_tokens"),
                k["c_finish_reason"].alias("chosen_finish_reason"), k["r_finish_reason"].alias("rejected_finish_reason"),
                turns.cast(pl.Int64).alias("_n_turns"), self.is_test.gather(p),
            ])  # fmt: skip

    def kto_chunks(self, rows: pl.DataFrame, n: int) -> Iterator[pl.DataFrame]:
        for start in range(0, rows.height, n):
            k = rows.slice(start, n)
            p, ci = k["_p"], k["ci"]
            c = self.cands.select("cid", "score", "rank", "sampler_hash", "model", "kind", "n_tokens",
                                  "finish_reason").gather(ci)  # fmt: skip
            pid, jh, st = self._per_prompt(p, "prompt_id", "judge_hash", "strategy")
            yield pl.DataFrame([
                pid, self.msgs.gather(p).alias("prompt"), _assistant(self.cands["text"].gather(ci)).alias("completion"),
                k["label"], c["cid"].alias("completion_id"), c["score"], c["rank"], jh, st, c["sampler_hash"],
                c["model"], c["kind"], c["n_tokens"], c["finish_reason"], self.is_test.gather(p),
            ])  # fmt: skip

    def ranking_chunks(self, good: pl.DataFrame, n: int) -> Iterator[pl.DataFrame]:
        for start in range(0, good.height, n):
            k = good.slice(start, n)
            p = k["_p"]
            pid, jh, st, done = self._per_prompt(p, "prompt_id", "judge_hash", "strategy", "complete")
            yield pl.concat(
                [pl.DataFrame([pid, self.msgs.gather(p).alias("prompt")]), k.drop("_p"),
                 pl.DataFrame([jh, st, done, self.is_test.gather(p)])],
                how="horizontal",
            )  # fmt: skip


def _assistant(text: pl.Series) -> pl.Series:
    """[{"role": "assistant", "content": text}] per row."""
    msg = pl.struct(pl.lit("assistant").alias("role"), pl.col("content"))
    return pl.DataFrame({"content": text}).select(pl.concat_list(msg).alias("m"))["m"]
