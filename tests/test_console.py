"""The terminal shows prefdata's own lines; the libraries' output (also from C code and child processes) goes to
RUN/logs/. The progress bar counts completions as they finish, not per shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefdata.console import capture_output, progress, say

CHILD = r"""
import os, subprocess, sys, warnings
from pathlib import Path
from prefdata.console import capture_output, say
with capture_output(Path(sys.argv[1]), "stage") as log:
    print("library print")
    os.write(2, b"C-level write to fd 2\n")
    warnings.warn("a library warning")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child process output\\n')"])
    say("prefdata line")
print("after capture")
print(log)
"""


def test_capture_sends_library_output_to_the_log_and_keeps_prefdata_lines(tmp_path):
    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "logs")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PREFDATA_VERBOSE": ""})
    assert p.returncode == 0, p.stderr
    terminal = p.stdout + p.stderr
    for noise in ("library print", "C-level write", "a library warning", "child process output"):
        assert noise not in terminal
    assert "prefdata line" in p.stderr and "after capture" in p.stdout
    log = Path(p.stdout.strip().splitlines()[-1])
    assert log.parent == tmp_path / "logs" and log.name.startswith("stage-")
    text = log.read_text()
    for noise in ("library print", "C-level write", "a library warning", "child process output"):
        assert noise in text
    assert "prefdata line" not in text


def test_verbose_captures_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFDATA_VERBOSE", "1")
    with capture_output(tmp_path / "logs", "stage") as log:
        say("x")
    assert log is None and not (tmp_path / "logs").exists()


def test_progress_bar_draws_on_the_terminal_stream(capsys):
    bar = progress(4, "demo", "item")
    bar.update(4)
    bar.close()
    assert "demo" in capsys.readouterr().err


def test_generate_console_script_prints_only_its_own_lines(tmp_path, tiny_llama_dir):
    """The README's first command, on the transformers backend: a handful of prefdata lines and the bar."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in ("one", "two", "three")))
    exe = Path(sys.executable).with_name("prefdata")
    env = {**os.environ, "PREFDATA_VERBOSE": "", "PYTHONWARNINGS": "always"}
    p = subprocess.run([str(exe), "generate", str(prompts), "--run", str(tmp_path / "run"), "--model", str(tiny_llama_dir),
                        "--backend", "hf", "-n", "2", "--max-tokens", "4"], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).replace("\r", "\n").splitlines() if ln.strip()]
    own = [ln for ln in lines if not ln.startswith("generate:") or " x " in ln]
    assert len(own) <= 15, own
    assert all(ln.split(":")[0] in ("generate", "run", "prompts", "candidates", "wall time", "log") for ln in own), own
    bars = [ln for ln in lines if ln.startswith("generate:") and "completion" in ln]
    assert bars and "6/6" in bars[-1]
    logs = list((tmp_path / "run" / "logs").glob("generate-*.log"))
    assert len(logs) == 1 and str(logs[0]) in p.stderr


def test_vllm_sampler_reports_each_request_as_it_finishes(vllm_llm, tiny_llama_dir):
    from prefdata.generate import GenerateConfig
    from prefdata.generate.sampling import make_sampler

    cfg = GenerateConfig(model=str(tiny_llama_dir), n=2, max_tokens=8, greedy=True)
    sampler = make_sampler(cfg, vllm_llm)
    convs = [[{"role": "user", "content": f"Count to {k}."}] for k in range(3)]
    calls: list[tuple[int, int]] = []
    out = sampler.sample(convs, cfg.plan(), on_done=lambda c, t: calls.append((c, t)))
    assert len(calls) == len(convs) * len(cfg.plan())  # one report per request, not one per batch
    comps = [c for per_prompt in out for per_kind in per_prompt for c in per_kind]
    assert sum(c for c, _ in calls) == len(comps) == 3 * 3
    assert sum(t for _, t in calls) == sum(c.n_tokens for c in comps)
