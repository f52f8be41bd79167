"""Judge prompt templates: YAML files in the top-level `judges/` folder, picked by name or by path.

Installed wheels carry the folder as `prefdata/judges_data` (pyproject force-include); a source checkout
uses `<repo>/judges`. The template's sha256 goes into run.json and the judge hash, so editing a template
starts a fresh judgments directory instead of mixing verdicts from two prompts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import prefdata
from prefdata.errors import PrefdataError
from prefdata.judges.verdict import PairRequest, VerdictRule

REQUIRED = ("name", "system", "user", "verdict_pattern", "labels")


def template_dirs() -> list[Path]:
    pkg = Path(prefdata.__file__).resolve().parent
    return [pkg / "judges_data", pkg.parent / "judges"]


def available_templates() -> list[str]:
    names: set[str] = set()
    for d in template_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


@dataclass
class JudgeTemplate:
    name: str
    system: str
    user: str
    rule: VerdictRule
    repair: str
    max_tokens: int = 512
    description: str = ""
    source: str = ""
    logprob_labels: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""

    def render(self, req: PairRequest) -> list[dict[str, str]]:
        """Chat messages for one call; the prompt conversation becomes the {question} text."""
        values = {
            "question": render_conversation(req.messages),
            "answer_a": req.first.text,
            "answer_b": req.second.text,
            "reference": req.reference or "",
        }
        try:
            user = self.user.format(**values)
        except (KeyError, IndexError) as e:
            raise PrefdataError(f"judge template {self.name}: unknown placeholder {e} in `user`") from e
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": user})
        return msgs

    def repair_messages(self, first: list[dict[str, str]], reply: str) -> list[dict[str, str]]:
        return [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": self.repair}]


def render_conversation(messages: tuple[tuple[str, str], ...]) -> str:
    """One user turn is shown as is; a longer conversation as labelled turns (the judge sees all context)."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(r, r.title())}: {c}" for r, c in messages)


def resolve_template_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if p.is_file():
            return p
        raise PrefdataError(f"judge template file {p} does not exist")
    for d in template_dirs():
        cand = d / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    raise PrefdataError(
        f"unknown judge {name_or_path!r}; pick one of {', '.join(available_templates()) or '(none found)'}, "
        "a template .yaml path, or a reward-model folder"
    )


def load_template(name_or_path: str) -> JudgeTemplate:
    path = resolve_template_path(name_or_path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PrefdataError(f"judge template {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PrefdataError(f"judge template {path} must be a YAML mapping")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise PrefdataError(f"judge template {path} lacks field(s) {', '.join(missing)}")
    if not isinstance(data["labels"], dict):
        raise PrefdataError(f"judge template {path}: labels must be a mapping of label: a | b | tie")
    labels = {str(k): str(v) for k, v in data["labels"].items()}
    bad = sorted(v for v in labels.values() if v not in ("a", "b", "tie"))
    if bad:
        raise PrefdataError(f"judge template {path}: labels must map to a, b or tie, got {bad}")
    pattern = check_pattern(path, str(data["verdict_pattern"]))
    return JudgeTemplate(
        name=str(data["name"]),
        system=str(data["system"]),
        user=str(data["user"]),
        rule=VerdictRule(pattern, labels),
        repair=str(data.get("repair") or "Reply with only your final verdict."),
        max_tokens=int(data.get("max_tokens", 512)),
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
        logprob_labels={str(k): str(v) for k, v in dict(data.get("logprob_labels") or {}).items()},
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        path=str(path),
    )


def check_pattern(path: Path, pattern: str) -> str:
    """A verdict_pattern that does not compile, or has no group for the label, is refused when the template
    loads: otherwise `re` fails at the first judge reply, mid-run, with a traceback."""
    try:
        groups = re.compile(pattern).groups
    except re.error as e:
        raise PrefdataError(f"judge template {path}: verdict_pattern {pattern!r} is not a valid regular expression ({e})") from None
    if groups < 1:
        raise PrefdataError(f"judge template {path}: verdict_pattern {pattern!r} needs a group around the label, e.g. \\[\\[(A|B|C)\\]\\]")
    return pattern
