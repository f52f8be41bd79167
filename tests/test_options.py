"""Each option is declared once, on its config field (issue 11.1): every field of every verb's config has a flag,
`--help` lists it with its default, and the YAML file and the flags give the same config."""

from __future__ import annotations

import enum
import json
import re
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from prefdata.cli import VERBS, main
from prefdata.config import build_config
from prefdata.options import _kind, build_verb_command, cli_fields, config_option, flag_names, load_class, verb_command

CONFIGS = {
    "generate": "prefdata.generate:GenerateConfig",
    "rank": "prefdata.rank:RankConfig",
    "export": "prefdata.export:ExportConfig",
    "push": "prefdata.export.push:PushConfig",
    "train": "prefdata.train.config:AIPOConfig",
    "iterate": "prefdata.iterate:IterateConfig",
    "eval": "prefdata.eval.run:EvalConfig",
    "judge_eval": "prefdata.eval.judge_eval:JudgeEvalConfig",
}
# Values for fields whose default is None (a flag cannot say None), valid for their config.
SAMPLES = {
    "strategy": "round-robin", "shard": "1/3", "requests_per_minute": 90.0, "second_temperature": 0.5, "second_n": 2,
    "max_model_len": 2048, "rm_max_length": 300, "max_tokens": 33, "limit": 5, "judge_model": "judge-x",
    "prompts": "p.jsonl", "prompt_field": "question", "system_prompt": "Be brief.", "reference_field": "answer",
    "model": "m", "base_url": ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], "judge_hash": "abc", "out": "o",
    "name": "nm", "pretty_name": "Pretty", "endpoint": "http://hub", "revision": "dev", "commit_message": "msg",
    "eval_prompts": "e.jsonl", "eval_max_tokens": 12, "baseline": "b", "judge": "verify:number",
    "lora_alpha": 4.0, "output_dir": "out-dir", "run_name": "r1", "prompts_per_round": 3,
}
# Fields whose default needs a change that still validates (and that the sample run shows is read).
CHANGES = {"n": 3, "temperature": 0.3, "top_p": 0.5, "stop": ["</s>", "###"], "greedy": True, "kinds": ["sample"],
           "tags": ["a", "b"], "keep_truncated": True, "plot": False, "beta": 0.2, "lora_merge": False,
           "ref_models": ["ref-a"], "learning_rate": 1e-6, "per_device_train_batch_size": 2, "tensor_parallel_size": 2, "lora_r": 8}


def _cli_value(kind: str, value: Any) -> list[str]:
    if isinstance(value, enum.Enum):
        value = value.value
    if kind == "yaml":
        return [json.dumps(value)]  # JSON is YAML: a string stays a string
    if kind == "list":
        return [str(v) for v in value]
    return [str(value)]


def _argv_and_yaml(cls: type) -> tuple[list[str], dict[str, Any]]:
    """Every field that can be given: its sample or changed value, else its default (None defaults skipped)."""
    hints = typing.get_type_hints(cls)
    argv: list[str] = []
    values: dict[str, Any] = {}
    for f in cli_fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        value = CHANGES.get(f.name, default)
        if value is None or value == [] or (value == "" and f.name != "repo_id"):
            value = SAMPLES.get(f.name)
        if value is None or value == [] or value == "":
            continue
        kind = _kind(hints[f.name])[1]
        if kind != "list" and isinstance(value, list):
            value = value[0]  # generate's base_url is one URL, rank's a list
        names = flag_names(f)
        long = next(n for n in names if n.startswith("--"))
        if kind == "bool":
            on, _, off = long.partition("/")
            argv.append(on if value else (off or f"--no-{on[2:]}"))
        elif kind == "list":
            for item in _cli_value(kind, value):
                argv += [names[-1], item]  # the last name: an alias where there is one (--kind, --ref-model)
        else:
            argv += [names[0], *_cli_value(kind, value)]
        values[f.name] = value.value if isinstance(value, enum.Enum) else value
    return argv, values


def _parse(config: str, argv: list[str]) -> Any:
    """The config the verb's generated options build from `argv` (a command whose body only keeps the config)."""
    got: list[Any] = []
    fn = verb_command(config, lambda cfg, **_: got.append(cfg), doc="capture", options=[config_option()])
    app = typer.Typer()
    app.command()(fn)
    typer.main.get_command(app).main(args=argv, standalone_mode=False)
    return got[0]


@pytest.mark.parametrize("verb", sorted(CONFIGS))  # the verbs with a config (env has none)
def test_every_field_has_a_flag_and_yaml_equals_flags(verb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls = load_class(CONFIGS[verb])
    cmd = build_verb_command(verb, verb.replace("_", "-"))
    declared = {p.name: p for p in cmd.params}
    for f in cli_fields(cls):
        assert f.name in declared, f"{verb}: field {f.name} has no flag"
        if f.name not in ("prompts",) or verb != "generate":
            opts = set(declared[f.name].opts) | set(getattr(declared[f.name], "secondary_opts", []))
            assert {n for names in flag_names(f) for n in names.split("/")} <= opts
    argv, values = _argv_and_yaml(cls)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(yaml.safe_dump(values))
    from_flags = _parse(CONFIGS[verb], argv)
    from_yaml = build_config(cls, yaml_file)
    assert from_flags == from_yaml
    own = set(vars(cls)["__annotations__"])  # TrainingArguments rewrites some of its own fields after init
    for name, value in values.items():
        if name not in own:
            continue
        got = getattr(from_flags, name)
        assert (got.value if isinstance(got, enum.Enum) else got) == value, name
    for name in set(CHANGES) & set(values):
        assert getattr(from_flags, name) != getattr(cls(**({"judge": "verify:number", "baseline": "b"} if verb == "eval"
                                                          else {})), name), name  # fmt: skip


def test_flags_win_over_the_yaml_file(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("n: 7\ntemperature: 0.1\nstop: [x]\n")
    cfg = _parse(CONFIGS["generate"], ["--config", str(yaml_file), "-n", "2"])
    assert (cfg.n, cfg.temperature, cfg.stop) == (2, 0.1, ["x"])


@pytest.mark.parametrize("verb", sorted(CONFIGS))  # the verbs with a config (env has none)
def test_help_lists_every_field_with_its_default(verb, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    cls = load_class(CONFIGS[verb])
    with pytest.raises(SystemExit) as e:
        main([verb.replace("_", "-"), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    blocks: list[str] = []  # one per option or argument: its first line and the wrapped help lines below it
    for ln in out.splitlines():
        if re.match(r"^│\s+(\*\s+)?(-|prompts )", ln):
            blocks.append(ln)
        elif blocks and ln.startswith("│"):
            blocks[-1] += "\n" + ln
    for f in cli_fields(cls):
        flag = next(n for n in flag_names(f) if n.startswith("--")).split("/")[0]
        if f.name == "prompts" and verb == "generate":
            flag = "prompts"  # the positional argument
        pattern = re.compile(rf"(?<![\w-]){re.escape(flag)}(?=[\s,/])")
        block = next((b for b in blocks if pattern.search(b.split("\n")[0])), None)
        assert block is not None, f"{verb} --help has no {flag}"
        assert "[default: " in block, f"{verb} --help: {flag} shows no default"


def test_commands_declare_no_options_of_their_own():
    """Option declarations live on the config fields and in prefdata/options.py, not in the verbs: a verb takes its
    run directory, input argument, --config, --quiet and --set from the helpers there, and declares nothing."""
    for path in (Path(__file__).parents[1] / "prefdata" / "cli" / "commands").glob("*.py"):
        text = path.read_text()
        for declaration in ("typer.Option(", "typer.Argument(", "verb_option(", "inspect.Parameter("):
            assert declaration not in text, f"{path.name} declares an option: {declaration}"


def test_rank_exposes_the_transport_fields_and_generate_the_sampler_ones():
    """Fields that had no flag before (issue 11.1): rank api_key_env/timeout_s/max_model_len/backoff_s, generate
    hf_batch_size/timeout/server_token_ids."""
    rank = _parse(CONFIGS["rank"], ["--api-key-env", "MY_KEY", "--timeout-s", "5", "--max-model-len", "512",
                                    "--backoff-s", "0.1"])  # fmt: skip
    assert (rank.api_key_env, rank.timeout_s, rank.max_model_len, rank.backoff_s) == ("MY_KEY", 5.0, 512, 0.1)
    gen = _parse(CONFIGS["generate"], ["--hf-batch-size", "2", "--timeout", "9", "--no-server-token-ids"])
    assert (gen.hf_batch_size, gen.timeout, gen.server_token_ids) == (2, 9.0, False)


def test_iterate_yaml_with_a_stage_field_at_the_top_says_where_it_goes(tmp_path, capsys):
    """Since iterate composes the stage configs (issue 11.4), `n:` or `judge:` belong under generate:/rank:."""
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("rounds: 1\nn: 3\njudge: verdict-only\n")
    with pytest.raises(SystemExit) as e:
        main(["iterate", "--workdir", str(tmp_path / "loop"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "n under generate:" in err and "judge under rank:" in err
    assert not (tmp_path / "loop").exists()
    cfg.write_text("rounds: 1\ngenerate: {n: 3, max_tokens: 9}\nrank: {judge: verify:number}\n")
    got = _parse(CONFIGS["iterate"], ["--config", str(cfg)])
    assert got.stage_config("generate").n == 3 and got.stage_config("rank").judge == "verify:number"
    assert got.stage_config("generate").max_tokens == 9 and got.stage_config("generate").temperature == 0.8


def test_iterate_stage_flags_are_the_stage_fields_and_the_loop_defaults_apply(tmp_path):
    from prefdata.iterate import IterateConfig

    defaults = IterateConfig()
    assert defaults.stage_config("generate").max_tokens == 256 and defaults.stage_config("rank").judge == "verdict-only"
    assert defaults.stage_config("export").keep_truncated is False
    got: list[Any] = []
    from prefdata.iterate import LOOP_DEFAULTS, LOOP_FLAGS, STAGE_CLASSES
    from prefdata.options import set_option, stage_parameters, stage_values, verb_option

    fn = verb_command(CONFIGS["iterate"], lambda cfg, **kw: got.append(kw), doc="c", options=[
        verb_option("workdir", Path, "--workdir", default=...), *stage_parameters(LOOP_FLAGS, STAGE_CLASSES, LOOP_DEFAULTS),
        set_option(("generate", "rank", "export", "train"))])  # fmt: skip
    app = typer.Typer()
    app.command()(fn)
    typer.main.get_command(app).main(args=["--workdir", "w", "-n", "2", "--judge", "j", "--drop-truncated", "--loss", "dpo",
                                           "--base-url", "http://a/v1"], standalone_mode=False)  # fmt: skip
    assert stage_values(STAGE_CLASSES, {k: v for k, v in got[0].items() if "__" in k}) == {
        "generate": {"n": 2}, "rank": {"judge": "j", "base_url": ["http://a/v1"]}, "export": {"keep_truncated": False},
        "train": {"loss_type": "dpo"}}


def test_exponent_floats_without_a_dot_are_floats_in_yaml_and_set(tmp_path):
    """PyYAML (YAML 1.1) reads `5e-7` as a string; `learning_rate: 5e-7` and `--set train.learning_rate=5e-06`
    were refused as "must be float". Numbers in that form are floats; words in a float field are still refused."""
    from prefdata.config import stage_fields
    from prefdata.errors import PrefdataError
    from prefdata.generate import GenerateConfig
    from prefdata.iterate import IterateConfig

    assert yaml.safe_load("x: 5e-7")["x"] == "5e-7"  # the YAML quirk this is about
    got = stage_fields(GenerateConfig, {"temperature": "7e-1", "min_p": "1E-2", "top_p": ".5"}, "--set generate")
    assert got == {"temperature": 0.7, "min_p": 0.01, "top_p": 0.5}
    with pytest.raises(PrefdataError, match="must be float"):
        stage_fields(GenerateConfig, {"temperature": "warm"}, "--set generate")
    cfg = IterateConfig(train={"learning_rate": "5e-06"})
    cfg.check_stages()
    assert cfg.train["learning_rate"] == 5e-06


def test_nan_and_infinities_are_refused_in_every_float_option(tmp_path, capsys):
    """`export --min-margin nan` passed (NaN fails no `<` check) and meant 0. Every float field of every verb,
    from a flag, a YAML file or `--set`, must be finite."""
    from prefdata.config import stage_fields
    from prefdata.errors import PrefdataError
    from prefdata.generate import GenerateConfig

    checked = 0
    for config in CONFIGS.values():
        cls = load_class(config)
        hints = typing.get_type_hints(cls)
        for f in cli_fields(cls):
            floats = {float, float | None, list[float], list[float] | None}
            if hints[f.name] not in floats:
                continue
            for bad in (float("nan"), float("inf"), -float("inf"), 10**400):
                with pytest.raises(PrefdataError, match="finite"):
                    build_config(cls, **{f.name: [bad] if "list" in str(hints[f.name]) else bad})
            checked += 1
    assert checked > 20  # min_margin, temperature, learning_rate, mrpo_weights, ...
    cfg = tmp_path / "c.yaml"
    cfg.write_text("min_margin: .nan\n")
    with pytest.raises(PrefdataError, match="min_margin must be a finite number"):
        build_config(load_class(CONFIGS["export"]), cfg)
    for value in (".inf", "1e999", "-.Inf"):
        with pytest.raises(PrefdataError, match="temperature must be a finite number"):
            stage_fields(GenerateConfig, {"temperature": yaml.safe_load(value)}, "--set generate")
    with pytest.raises(SystemExit) as e:
        main(["export", "--run", str(tmp_path / "r"), "--min-margin", "nan", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "finite" in err
    assert not (tmp_path / "o").exists()


def test_every_verb_but_env_is_checked_above():
    """A new verb with options must join CONFIGS; `env` takes none."""
    assert set(VERBS) - set(CONFIGS) == {"env"}
