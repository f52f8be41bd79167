"""The OpenAI-compatible client's own cost (issue 24): `prefdata rank` and `generate --backend openai` against an
instant server, the server pinned to one core and the client to the other.

The server is bench/judge_server.py (asyncio, keep-alive; its own rate: `python bench/judge_server.py --selftest`).
The client side runs in this process, pinned to its core: the real CLI (`prefdata.cli.main`), so the rank is the
whole stage (templates, verdict parsing, content keys, judgment shards, rankings), and the bare `ChatClient.chat`
on the same judge bodies. Reported per case: calls, wall seconds, calls/s, this process's CPU ms per call
(getrusage, all threads, the call alone: imports and run building are outside it), and the client's in-flight
idle fraction (time with fewer than --concurrency calls in flight, `prefdata.llm.flight.Flight`). Every stored verdict is
checked against the server's rule.

Usage:
  python bench/bench_judge_client.py [--prompts 60] [--cands 16] [--concurrency 64]
      [--strategies iterative,round-robin[,sort]] [--generate-prompts 2000] [--bare-calls 14400]
      [--max-model-len N]  (the server reports a context: every call is counted with /tokenize first)
      [--delay-ms MS]      (the server answers each chat call this late: occupancy shows whether the pipe stays full)
      [--profile out.prof] (cProfile of the client side of every case, for `python -m pstats`)
      [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.judge_server import verdict_for  # noqa: E402
from prefdata.llm import flight  # noqa: E402
from prefdata.run.store import RunDir  # noqa: E402
from tests.helpers import candidate_row, prompt_row, write_inputs, write_jsonl  # noqa: E402

WORDS = [f"w{i}" for i in range(300)]


SERVER_PID: int | None = None


def server_cpu_s() -> float:
    """The server process's CPU seconds (/proc): a low share while the client waits means the server's core was taken."""
    if SERVER_PID is None:
        return 0.0
    fields = open(f"/proc/{SERVER_PID}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build_run(path: Path, n_prompts: int, n_cands: int, words: int, seed: int = 0) -> RunDir:
    """Prompts whose candidates carry a hidden quality `q=N` (the server's verdict rule) and `words` words each."""
    rng = random.Random(seed)
    run = RunDir(path)
    run.record_stage("generate", "bench", {"note": "bench_judge_client"})
    prows, crows = [], []
    for i in range(n_prompts):
        prows.append(prompt_row(f"Question {i}: " + " ".join(rng.choices(WORDS, k=30)) + "?"))
        pid = prows[-1]["prompt_id"]
        qs = rng.sample(range(1000), n_cands)
        crows += [candidate_row(pid, "s0", j, f"answer q={q} " + " ".join(rng.choices(WORDS, k=words)))
                  for j, q in enumerate(qs)]  # fmt: skip
    return write_inputs(run, prows, crows)


@contextlib.contextmanager
def measured(out: dict[str, Any], prof: cProfile.Profile | None):
    """Wall, CPU and the client's occupancy of the block; the block sets out['calls']."""
    flight.FLIGHTS = flights = []
    load = open("/proc/loadavg").read().split()[0]
    t0, c0, s0 = time.perf_counter(), cpu_s(), server_cpu_s()
    if prof:
        prof.enable()
    try:
        yield
    finally:
        if prof:
            prof.disable()
        wall, cpu, scpu = time.perf_counter() - t0, cpu_s() - c0, server_cpu_s() - s0
        flight.FLIGHTS = None
        calls = out["calls"]
        span = sum(f.span_s for f in flights)
        out.update(wall_s=round(wall, 2), calls_per_s=round(calls / wall, 1), cpu_ms_per_call=round(1000 * cpu / calls, 3),
                   cpu_share=round(cpu / wall, 2), server_cpu_share=round(scpu / wall, 2), idle_fraction=round(sum(f.under_s for f in flights) / span, 3) if span else None,
                   load_before=load, load_after=open("/proc/loadavg").read().split()[0])


def cli(*args: str) -> int:
    from prefdata.cli import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def bench_rank(url: str, tmp: Path, strategy: str, a: argparse.Namespace, prof: cProfile.Profile | None) -> dict[str, Any]:
    run = build_run(tmp / f"run-{strategy}", a.prompts, a.cands, a.words)
    out: dict[str, Any] = {"case": f"rank {strategy}", "calls": 0}
    args = ["rank", "--run", str(run.path), "--base-url", url, "--judge", a.judge, "--strategy", strategy,
            "--concurrency", str(a.concurrency), "--no-progress", *a.rank_args]
    with measured(out, prof):
        code = cli(*args)
        j = pl.read_parquet(run.path / "judgments")
        out["calls"] = j.height
    assert code == 0, f"rank exited {code}"
    # every verdict is the server's for that pair, in that order
    texts = dict(pl.read_parquet(run.path / "candidates").select("candidate_id", "text").iter_rows())
    want = {"[[A]]": "a", "[[B]]": "b", "[[C]]": "tie"}
    bad = sum(want[verdict_for(f"{texts[x]} {texts[y]}")] != v for x, y, v in j.select("a_id", "b_id", "verdict").iter_rows())
    assert bad == 0, f"{bad} verdicts are not the server's"
    return out


def judge_bodies(n: int, tmp: Path, a: argparse.Namespace) -> list[dict[str, Any]]:
    from prefdata.judges.templates import load_template
    from prefdata.judges.verdict import Candidate, PairRequest

    t = load_template(a.judge)
    rng = random.Random(1)
    bodies = []
    for i in range(n):
        c1, c2 = (Candidate(str(k), f"answer q={rng.randrange(1000)} " + " ".join(rng.choices(WORDS, k=a.words)))
                  for k in range(2))  # fmt: skip
        conv = t.render(PairRequest(str(i), (("user", f"Question {i}?"),), c1, c2))
        bodies.append({"messages": conv, "max_tokens": t.max_tokens, "temperature": 0.0})
    return bodies


def bench_bare(url: str, tmp: Path, a: argparse.Namespace, prof: cProfile.Profile | None) -> dict[str, Any]:
    from prefdata.llm.openai_client import ChatClient

    bodies = judge_bodies(a.bare_calls, tmp, a)
    out: dict[str, Any] = {"case": f"bare ChatClient.chat, batches of {a.bare_batch}", "calls": len(bodies)}
    client = ChatClient([url], "bench-judge", concurrency=a.concurrency)
    with measured(out, prof):
        for i in range(0, len(bodies), a.bare_batch):
            res = client.chat(bodies[i : i + a.bare_batch])
            assert all(r.error is None for r in res), res[0].error
    close = getattr(client, "close", None)
    if close:
        close()
    return out


def bench_bare_aiohttp(url: str, tmp: Path, a: argparse.Namespace, prof: cProfile.Profile | None) -> dict[str, Any]:
    """The same calls through aiohttp (a kept-alive pool sized to the concurrency, one session, one loop), with only
    what a judge needs: post, status check, JSON reply, the text. No retries, masking or context check, so this is
    a floor for what prefdata's client would cost on aiohttp, to weigh against keeping `llm/http1.py`."""
    import asyncio

    import aiohttp

    bodies = [dict(b, model="bench-judge") for b in judge_bodies(a.bare_calls, tmp, a)]
    out: dict[str, Any] = {"case": f"bare aiohttp (floor), batches of {a.bare_batch}", "calls": len(bodies)}
    loop = asyncio.new_event_loop()

    async def one(session: Any, sem: asyncio.Semaphore, body: dict[str, Any]) -> str:
        async with sem, session.post(url + "/chat/completions", json=body) as r:
            r.raise_for_status()
            return str((await r.json())["choices"][0]["message"]["content"])

    async def batch(session: Any, sem: asyncio.Semaphore, part: list[dict[str, Any]]) -> list[str]:
        return await asyncio.gather(*(one(session, sem, b) for b in part))

    async def open_session() -> Any:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=a.concurrency))

    session = loop.run_until_complete(open_session())
    sem = asyncio.Semaphore(a.concurrency)
    try:
        with measured(out, prof):
            for i in range(0, len(bodies), a.bare_batch):
                texts = loop.run_until_complete(batch(session, sem, bodies[i : i + a.bare_batch]))
                assert all(texts), texts[:1]
    finally:
        loop.run_until_complete(session.close())
        loop.close()
    return out


def bench_generate(url: str, tmp: Path, a: argparse.Namespace, prof: cProfile.Profile | None) -> dict[str, Any]:
    prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": f"Question {i}: " + " ".join(WORDS[i % 50 : i % 50 + 40])}
                                                  for i in range(a.generate_prompts)])  # fmt: skip
    out: dict[str, Any] = {"case": "generate --backend openai (n=4)", "calls": a.generate_prompts}
    with measured(out, prof):
        code = cli("generate", str(prompts), "--run", str(tmp / "gen"), "--backend", "openai", "--base-url", url,
                   "--model", "bench-judge", "-n", "4", "--max-tokens", "32", "--concurrency", str(a.concurrency), "--quiet")
    assert code == 0, f"generate exited {code}"
    n = pl.read_parquet(tmp / "gen" / "candidates").height
    assert n == 4 * a.generate_prompts, n
    return out


def profile_threads() -> list[cProfile.Profile]:
    """Profile every thread started from now on (the client's event loop, the judge rounds): cProfile sees only
    the thread that enables it."""
    profs: list[cProfile.Profile] = []
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        p = cProfile.Profile()
        profs.append(p)
        p.enable()
        try:
            run(self)
        finally:
            p.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    return profs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--cands", type=int, default=16)
    ap.add_argument("--words", type=int, default=60, help="words per candidate text")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--judge", default="mt-bench-pair-v2")
    ap.add_argument("--strategies", default="iterative,round-robin", help="comma-separated; add sort where it exists")
    ap.add_argument("--rank-args", default="", help="more rank flags, e.g. '--batch-size 256'")
    ap.add_argument("--bare-calls", type=int, default=14400)
    ap.add_argument("--bare-batch", type=int, default=240, help="bodies per chat() call (a round robin round of N=16)")
    ap.add_argument("--aiohttp", action="store_true", help="also the bare calls through aiohttp (a floor), for comparison")
    ap.add_argument("--generate-prompts", type=int, default=2000)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--delay-ms", type=float, default=0.0, help="the server answers each chat call this late")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    a.rank_args = a.rank_args.split()
    cmd = [sys.executable, str(Path(__file__).with_name("judge_server.py")), "--cpu", str(a.server_cpu)]
    if a.max_model_len:
        cmd += ["--max-model-len", str(a.max_model_len)]
    if a.delay_ms:
        cmd += ["--delay-ms", str(a.delay_ms)]
    global SERVER_PID
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    SERVER_PID = server.pid
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        os.sched_setaffinity(0, {a.client_cpu})
        prof = cProfile.Profile() if a.profile else None
        thread_profs = profile_threads() if a.profile else []
        rows = []
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            for s in [s for s in a.strategies.split(",") if s]:
                rows.append(bench_rank(url, tmp, s, a, prof))
                print(rows[-1], flush=True)
            if a.bare_calls:
                rows.append(bench_bare(url, tmp, a, prof))
                print(rows[-1], flush=True)
            if a.bare_calls and a.aiohttp:
                rows.append(bench_bare_aiohttp(url, tmp, a, prof))
                print(rows[-1], flush=True)
            if a.generate_prompts:
                rows.append(bench_generate(url, tmp, a, prof))
                print(rows[-1], flush=True)
        if prof:
            stats = pstats.Stats(prof)
            for p in thread_profs:
                p.create_stats()
                stats.add(p)
            stats.dump_stats(a.profile)
    finally:
        server.terminate()
        server.wait()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"\nCPU: {cpu}; server on core {a.server_cpu}, client on core {a.client_cpu}; concurrency {a.concurrency}; "
          f"server delay {a.delay_ms:g} ms; max_model_len {a.max_model_len}")
    print("| case | calls | wall s | calls/s | client CPU ms/call | client CPU share | server CPU share | idle fraction | "
          "load before/after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['calls']} | {r['wall_s']} | {r['calls_per_s']} | {r['cpu_ms_per_call']} | {r['cpu_share']} | "
              f"{r['server_cpu_share']} | "
              f"{r['idle_fraction']} | {r['load_before']} / {r['load_after']} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
