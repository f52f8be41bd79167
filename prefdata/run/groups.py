"""The run's prompts and candidates read in groups, for the stages that stream a run (rank).

Built from ids alone, with the whole run checked up front; `Groups.load(g)` reads one group's texts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from prefdata.errors import PrefdataError
from prefdata.judges.verdict import Candidate
from prefdata.run.records import KIND_ORDER
from prefdata.run.store import RunDir
from prefdata.sampler_choice import ALL, choose_sampler


@dataclass
class Prompt:
    pid: str
    messages: tuple[tuple[str, str], ...]
    reference: str | None
    cands: list[Candidate]


class Groups:
    """The prompts that have candidates, in prompts.parquet order, cut into groups of `size` prompts.

    Built from ids alone (prompt_id, candidate_id, kind, index of every candidate: no text is read), with the checks
    of the whole run done up front: missing columns, one id with two texts, kinds, orphan prompt ids. `load(g)`
    reads one group's prompts and candidate texts (a lazy scan of the shards that hold them, filtered by id).
    """

    def __init__(self, run: RunDir, kinds: list[str], size: int, sampler: str | None = None):
        self.run, self.size = run, size
        if not run.prompts_file.is_file():
            run.read_prompts()  # raises the one-line error
        head = pl.read_parquet_schema(run.prompts_file)
        self.has_ref = "reference" in head
        no_ref = pl.col("reference").is_null() if self.has_ref else pl.lit(True)
        prompts = pl.scan_parquet(run.prompts_file).select("prompt_id", no_ref.alias("_no_ref")).with_row_index("_row").collect()
        self.n_prompts_file = prompts.height
        if not run.candidate_shards():
            raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
        need = {"prompt_id", "candidate_id", "text", "kind", "index"}
        missing_cols = need - run.candidate_column_names()
        if missing_cols:
            raise PrefdataError(f"candidates in {run.path} lack column(s) {', '.join(sorted(missing_cols))}")
        scan = run.scan_candidate_shards(["prompt_id", "candidate_id", "kind", "index", "sampler_hash"])
        assert scan is not None
        cands = scan.collect()
        run.check_candidate_texts(cands)
        cands = cands.unique(subset=["candidate_id"], keep="first", maintain_order=True)
        if cands.height == 0:
            raise PrefdataError(f"{run.path} has no candidates; run `prefdata generate --run {run.path}` first")
        if kinds:
            cands = cands.filter(pl.col("kind").is_in(kinds))
            if cands.height == 0:
                raise PrefdataError(f"no candidates of kind {', '.join(kinds)} in {run.path}")
        # one sampler at a time (prefdata.sampler_choice): `sampler` is set only when the run holds several, and
        # then enters the judge hash, so each sampler's rankings are kept apart
        samplers = sorted(cands["sampler_hash"].drop_nulls().unique().to_list())
        chosen = choose_sampler(samplers, sampler, run.read_meta(), str(run.path), "rank")
        self.sampler = chosen if len(samplers) > 1 else None
        self.samplers = [chosen] if chosen else samplers
        if self.sampler is not None:
            cands = cands.filter(pl.col("sampler_hash") == self.sampler)
        cands = cands.drop("sampler_hash")
        with_cands = cands.select("prompt_id").unique()
        orphans = with_cands.join(prompts.select("prompt_id"), on="prompt_id", how="anti")["prompt_id"]
        if orphans.len():
            raise PrefdataError(
                f"{orphans.len()} prompt id(s) in candidates are not in prompts.parquet (e.g. {orphans.min()}); "
                "the run directory is inconsistent"
            )
        self.prompts = (
            prompts.filter(pl.col("prompt_id").is_in(with_cands["prompt_id"].implode()))
            .unique(subset=["prompt_id"], keep="first", maintain_order=True)
            .with_row_index("_pos")
        )
        self.cands = cands.join(self.prompts.select("prompt_id", "_pos"), on="prompt_id").sort("_pos", maintain_order=True)
        self.n_prompts = self.prompts.height
        self.n_candidates = self.cands.height
        self.n_groups = -(-self.n_prompts // size)
        self.without_reference = int(self.prompts["_no_ref"].sum())

    def _span(self, g: int) -> tuple[int, int]:
        return g * self.size, min((g + 1) * self.size, self.n_prompts)

    def _cands(self, g: int) -> pl.DataFrame:
        lo, hi = self._span(g)
        pos = self.cands["_pos"]
        a, b = int(pos.search_sorted(lo, "left")), int(pos.search_sorted(hi, "left"))
        return self.cands.slice(a, b - a)

    def distinct_texts(self, g: int, with_reference_only: bool) -> int:
        """The number of distinct texts in each of group g's prompts, summed, counted in polars (no Python strings):
        what a scores run asks when nothing is cached. `with_reference_only`: count only prompts with a reference."""
        cands = self._cands(g)
        if with_reference_only:
            cands = cands.join(self.prompts.filter(~pl.col("_no_ref")).select("_pos"), on="_pos", how="semi")
        if cands.height == 0:
            return 0
        scan = self.run.scan_candidate_shards(["prompt_id", "candidate_id", "text"], cands["_shard"].unique().to_list())
        assert scan is not None
        texts = scan.filter(pl.col("candidate_id").is_in(cands["candidate_id"].implode()))
        return int(texts.select(pl.struct("prompt_id", pl.col("text").fill_null("")).n_unique()).collect().item())

    def load(self, g: int) -> list[Prompt]:
        """Group g's prompts with their candidates in a fixed order (kind, index, id)."""
        lo, hi = self._span(g)
        cands = self._cands(g)
        scan = self.run.scan_candidate_shards(["candidate_id", "text"], cands["_shard"].unique().to_list())
        assert scan is not None
        texts = scan.filter(pl.col("candidate_id").is_in(cands["candidate_id"].implode())).collect()
        text_of = dict(zip(texts["candidate_id"].to_list(), texts["text"].to_list(), strict=True))
        by_prompt: dict[str, list[tuple[int, str, int, str]]] = {}
        for pid, cid, kind, index in cands.select("prompt_id", "candidate_id", "kind", "index").iter_rows():
            by_prompt.setdefault(pid, []).append((KIND_ORDER.get(kind, 9), kind, index, cid))
        rows = self.prompts["_row"].slice(lo, hi - lo)
        first, last = int(rows.min()), int(rows.max())  # type: ignore[arg-type]
        cols = ["prompt_id", "messages", *(["reference"] if self.has_ref else [])]
        prompts = (
            pl.scan_parquet(self.run.prompts_file).with_row_index("_row").slice(first, last - first + 1)
            .filter(pl.col("_row").is_in(rows.implode())).select(cols).collect()
        )
        out: list[Prompt] = []
        for row in prompts.iter_rows(named=True):
            order = sorted(by_prompt[row["prompt_id"]])
            msgs = tuple((m["role"], m["content"]) for m in row["messages"])
            out.append(Prompt(row["prompt_id"], msgs, row["reference"] if self.has_ref else None,
                               [Candidate(cid, text_of[cid] or "") for _, _, _, cid in order]))
        return out

    def split(self, old: pl.DataFrame | None) -> Callable[[int], pl.DataFrame | None]:
        """Judgment rows (of prompts in the run) by group, each group's in `created` order."""
        if old is None or old.height == 0:
            return lambda g: None
        df = (
            old.lazy()
            .join(self.prompts.lazy().select("prompt_id", "_pos"), on="prompt_id")
            .with_columns((pl.col("_pos") // self.size).alias("_g"))
            .sort(["_g", "created"], maintain_order=True)
            .drop("_pos", "created")
            .collect()
        )
        gs = df["_g"]

        def part(g: int) -> pl.DataFrame | None:
            a, b = int(gs.search_sorted(g, "left")), int(gs.search_sorted(g + 1, "left"))
            return df.slice(a, b - a) if b > a else None

        return part


def prompts_with_candidates(run: RunDir, kinds: list[str]) -> list[Prompt]:
    """Every prompt with its candidates in a fixed order (kind, index, id); join and counts checked. Holds the whole
    run in memory: `rank` itself reads it group by group."""
    groups = Groups(run, kinds, sys.maxsize, sampler=ALL)
    return [p for g in range(groups.n_groups) for p in groups.load(g)]
