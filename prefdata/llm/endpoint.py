"""One endpoint config: how sampling and judging reach an OpenAI-compatible server, under one set of names.

`Endpoint` declares each transport option once (help, flags, range checks). `GenerateConfig` and `JudgeConfig`
carry these options as their own flat fields (the flags and YAML keys stay `--base-url`, `--concurrency`, ...) by
declaring them with `endpoint_field(name)`, a copy of the declaration here; `endpoint_of(cfg)` hands the values
to the transport. No field changes results (URLs, concurrency and retries never enter a hash).

Names an earlier version used stay accepted: generate's `timeout` (flag `--timeout`, YAML `timeout:`) is
`timeout_s`; see `prefdata.config.field_aliases`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prefdata.config import check_env_name, check_range
from prefdata.options import opt


@dataclass(frozen=True)
class Endpoint:
    """Where an OpenAI-compatible server is and how hard to try it. Plain values: pickled to a worker as is."""

    base_url: list[str] = opt([], "OpenAI-compatible server URL, with /v1 (repeat to spread load over several).",
                              identity=False)
    api_key_env: str = opt("OPENAI_API_KEY", "Name of the environment variable holding the API key (the key itself is "
                           "never recorded).", identity=False)
    concurrency: int = opt(8, "OpenAI: requests in flight.", identity=False)
    max_retries: int = opt(4, "OpenAI: retries per request (connection errors, 5xx, 429, garbage replies).", identity=False)
    backoff_s: float = opt(0.5, "OpenAI: first retry delay in seconds, doubled each time.", identity=False)
    requests_per_minute: float | None = opt(None, "OpenAI: requests per minute over all URLs.",
                                            flag=("--rpm", "--requests-per-minute"), identity=False)
    timeout_s: float = opt(120.0, "OpenAI: seconds per request.", flag=("--timeout-s", "--timeout"), identity=False,
                           aliases=("timeout",))
    unreachable_after: int = opt(8, "OpenAI: stop the run after this many connection failures in a row.", identity=False)

    def __post_init__(self) -> None:
        check_endpoint(self)

    def client(self, model: str | None, what: str = "server") -> Any:
        """The chat client for these settings (`prefdata.llm.openai_client.ChatClient`)."""
        from prefdata.llm.openai_client import ChatClient

        return ChatClient(list(self.base_url), model, what=what, api_key_env=self.api_key_env,
                          concurrency=self.concurrency, max_retries=self.max_retries, backoff_s=self.backoff_s,
                          requests_per_minute=self.requests_per_minute, timeout_s=self.timeout_s,
                          unreachable_after=self.unreachable_after)  # fmt: skip


_FIELDS = {f.name: f for f in dataclasses.fields(Endpoint)}
SHARED = "endpoint"  # metadata key: this field is Endpoint's, carried flat by a stage or judge config


def endpoint_field(name: str, **change: Any) -> Any:
    """Endpoint's declaration of `name` (help, flags) for a config that carries it flat; `default=` where that
    config needs another default (say why beside it)."""
    f = _FIELDS[name]
    meta = {**f.metadata, SHARED: True}
    if "default" in change:
        value = change["default"]
        if isinstance(value, list):
            return dataclasses.field(default_factory=lambda: list(value), metadata=meta)
        return dataclasses.field(default=value, metadata=meta)
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=meta)
    return dataclasses.field(default=f.default, metadata=meta)


def check_endpoint(cfg: Any) -> None:
    """The range checks of the endpoint fields `cfg` carries, one line naming the flag."""
    check_env_name("--api-key-env", cfg.api_key_env)
    check_range("--concurrency", cfg.concurrency, 1)
    check_range("--max-retries", cfg.max_retries, 0)
    check_range("--backoff-s", cfg.backoff_s, 0)
    check_range("--rpm", cfg.requests_per_minute, 0, lo_open=True)
    check_range("--timeout-s", cfg.timeout_s, 0, lo_open=True)
    check_range("--unreachable-after", cfg.unreachable_after, 1)  # 0 or -1 once meant 1, silently


def normalize_urls(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """A URL list from one URL (the library's and old configs' `base_url="http://..."`), a list, or none."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def endpoint_of(cfg: Any) -> Endpoint:
    """The Endpoint of a config carrying the endpoint fields flat (GenerateConfig, JudgeConfig)."""
    return Endpoint(**{name: getattr(cfg, name) for name in _FIELDS})
