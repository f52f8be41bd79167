"""Bad input on the command line (issue 10.9, 10.10): one `error:` line, exit 2, nothing written.

Covers unreadable or undecodable prompt files, a read-only run location, `iterate --set` mistakes caught
before round 0, out-of-range sampling values, a zero-row dataset, and a key passed where a variable name goes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import polars as pl
import pytest

import prefdata.train.config  # noqa: F401  imported here, not under capsys: its logging must not bind to a captured stream
from prefdata.errors import PrefdataError
from tests.helpers import cli

KEY = "hf_" + "Q7x" * 10  # looks like a Hub token; must never reach a file


def _one_line(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def _bad_files(tmp: Path) -> list[tuple[Path, str]]:
    files = []
    p = tmp / "binary.jsonl"
    p.write_bytes(bytes(range(256)) * 4)
    files.append((p, "is binary, not text"))
    p = tmp / "latin1.jsonl"
    p.write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    files.append((p, "is not UTF-8 text (byte 0xe9 at offset 15)"))
    p = tmp / "latin1.csv"
    p.write_bytes("prompt\ncafé au lait\n".encode("latin-1"))
    files.append((p, "is not UTF-8 text"))
    p = tmp / "binary.csv"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    files.append((p, "is binary, not text"))
    p = tmp / "corrupt.parquet"
    pl.DataFrame({"prompt": ["a", "b"]}).write_parquet(p)
    p.write_bytes(p.read_bytes()[:-12])
    files.append((p, "is not a valid parquet file"))
    p = tmp / "empty.parquet"
    pl.DataFrame({"prompt": []}, schema={"prompt": pl.String}).write_parquet(p)
    files.append((p, "has no rows"))
    return files


def test_bad_prompt_files(tmp_path, capsys):
    for f, needle in _bad_files(tmp_path):
        run = tmp_path / f"run-{f.stem}"
        code, _, err = cli(capsys, "generate", str(f), "--run", str(run), "--backend", "openai",
                         "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
        _one_line(code, err, needle)
        assert "Traceback" not in err and not run.exists(), f


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_prompt_file(tmp_path, capsys):
    f = tmp_path / "secret.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    f.chmod(0)
    code, _, err = cli(capsys, "generate", str(f), "--run", str(tmp_path / "run"))
    _one_line(code, err, f"cannot read prompt file {f}")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_prompt_file_that_fails_to_read(tmp_path, capsys):
    """A file whose read fails (here /proc/self/mem: EIO at offset 0, for root too) is one line, no run."""
    f = tmp_path / "broken.jsonl"
    f.symlink_to("/proc/self/mem")
    code, _, err = cli(capsys, "generate", str(f), "--run", str(tmp_path / "run"))
    _one_line(code, err, f"cannot read prompt file {f}")
    assert not (tmp_path / "run").exists()


def _read_only_dir(tmp: Path) -> Path:
    """A folder this process cannot write in: chmod 555, or (as root, who ignores modes) /sys."""
    if os.geteuid() != 0:
        d = tmp / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(name)
    pytest.skip("no read-only location available to root here")


def test_read_only_run_location(tmp_path, capsys):
    ro = _read_only_dir(tmp_path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    code, _, err = cli(capsys, "generate", str(prompts), "--run", str(ro / "run"), "--backend", "openai",
                     "--base-url", "http://127.0.0.1:9/v1")  # fmt: skip
    _one_line(code, err, "is not writable")
    code, _, err = cli(capsys, "iterate", "--workdir", str(ro / "loop"))
    _one_line(code, err, "--workdir")
    assert not (ro / "run").exists() and not (ro / "loop").exists()


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["--set", "generate.n=abc"], "--set generate.n: config field 'n' must be int, got 'abc'"),
        (["--set", "generate.nosuch=1"], "unknown field(s) nosuch for GenerateConfig"),
        (["--set", "generate.temprature=1"], "did you mean temperature?"),
        (["--set", "generate.top_p=5"], "--set generate: --top-p must be in (0, 1], got 5"),
        (["--set", "rank.temperature=-1"], "--set rank: --temperature must be in [0, inf)"),
        (["--set", "export.pairs=best"], "--set export: unknown --pairs 'best'"),
        (["--set", "export.out=x"], "out is set by the loop itself"),
        (["--set", "train.learning_rate=abc"], "--set train.learning_rate: config field 'learning_rate' must be float"),
        (["--set", "train.nosuch=1"], "unknown field(s) nosuch for AIPOConfig"),
        (["--set", "train.loss_type=bogus"], "--set train: loss_type 'bogus' is not one of"),  # a bad value, not only a bad name (issue 11.4)
        (["--set", "train.learning_rate=-1"], "--set train: learning_rate must be a positive number"),
        (["-n", "0"], "-n must be in [1, inf), got 0"),
    ],
)
def test_iterate_sets_checked_before_round_0(tmp_path, capsys, sets, needle):
    work = tmp_path / "loop"
    code, _, err = cli(capsys, "iterate", "--workdir", str(work), *sets)
    _one_line(code, err, needle)
    assert not work.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--top-p", "5"], "--top-p must be in (0, 1], got 5.0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--temperature", "-0.1"], "--temperature must be in [0, inf)"),
        (["-n", "0"], "-n must be in [1, inf), got 0"),
        (["--min-p", "2"], "--min-p must be in [0, 1]"),
        (["--max-tokens", "0"], "--max-tokens must be in [1, inf)"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be in (0, inf)"),
        (["--top-k", "-5"], "--top-k must be in [-1, inf)"),
        (["--second-temperature", "-1"], "--second-temperature must be in [0, inf)"),
        (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
        (["--concurrency", "0"], "--concurrency must be in [1, inf)"),
        (["--temperature", "nan"], "temperature must be a finite number, got nan"),
    ],
)
def test_out_of_range_sampling_values(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "generate", "--run", str(run), *args)
    _one_line(code, err, needle)
    assert not run.exists()


def test_rank_out_of_range(tmp_path, capsys):
    code, _, err = cli(capsys, "rank", "--run", str(tmp_path / "r"), "--temperature", "-1")
    _one_line(code, err, "--temperature must be in [0, inf)")
    code, _, err = cli(capsys, "rank", "--run", str(tmp_path / "r"), "--max-tokens", "0")
    _one_line(code, err, "--max-tokens must be in [1, inf)")


def test_zero_row_pairs_dataset_with_all_columns(tmp_path):
    from prefdata.train.data import load_pairs

    msgs = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    empty = pl.DataFrame(schema={"prompt": msgs, "chosen": msgs, "rejected": msgs})
    (tmp_path / "data").mkdir()
    empty.write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    with pytest.raises(PrefdataError, match="has no rows"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("")
    with pytest.raises(PrefdataError, match="has no rows"):
        load_pairs(tmp_path / "pairs.jsonl")


@pytest.mark.parametrize("value", [KEY, "sk-proj-" + "a1B2" * 8, "0123456789abcdef0123456789abcdef", "not a name"])
def test_api_key_env_refuses_a_key(tmp_path, capsys, value):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "generate", "--run", str(run), "--backend", "openai", "--base-url",
                     "http://127.0.0.1:9/v1", "--api-key-env", value)  # fmt: skip
    _one_line(code, err, "--api-key-env takes the NAME of an environment variable")
    assert value not in err and not run.exists()
    from prefdata.rank import RankConfig

    with pytest.raises(PrefdataError, match="takes the NAME"):
        RankConfig(api_key_env=value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "TOGETHER_API_KEY_2", "AZURE_OPENAI_API_KEY_EASTUS2"])
def test_api_key_env_accepts_names(name):
    from prefdata.generate import GenerateConfig

    assert GenerateConfig(api_key_env=name).api_key_env == name
