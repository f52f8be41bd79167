"""transformers `generate` as a `ChatModel`, the fallback without vLLM: left padding, `num_return_sequences`.

It samples (generate `--backend hf`) and can answer a judge's text calls; it gives no log-probs, so a judge in
logprob mode needs vllm or openai.
"""

from __future__ import annotations

from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.chat import ChatOut, Completion, EngineModel, ModelSpec, OnDone, OnTick, Sampling, answered
from prefdata.llm.context import TokenBudget, chat_token_ids
from prefdata.llm.hardware import resolve_dtype


class HFChatModel(EngineModel):
    """A ChatModel over `AutoModelForCausalLM.generate`, `batch_size` conversations per call."""

    engine = "hf"

    def __init__(self, model_path: str, *, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 batch_size: int = 8, label: str | None = None) -> None:  # fmt: skip
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = label or model_path
        self.batch_size = max(1, batch_size)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.dtype = resolve_dtype(dtype)
            self.model, info = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=getattr(torch, self.dtype), output_loading_info=True
            )
        except OSError as e:
            raise PrefdataError(f"transformers could not load model {model_path}: {str(e).splitlines()[0]}") from e
        fresh = sorted(set(info.get("missing_keys") or []) | {str(k[0]) if isinstance(k, tuple) else str(k)
                                                                for k in info.get("mismatched_keys") or []})  # fmt: skip
        if fresh:  # e.g. lm_head.weight of a reward model: transformers only warns, in the log
            raise PrefdataError(
                f"model {model_path} has no trained weights for {', '.join(fresh[:3])}{' ...' if len(fresh) > 3 else ''} "
                "(they would be initialised at random and the samples would mean nothing); give a trained *ForCausalLM model"
            )
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_model_len = int(max_model_len or getattr(self.model.config, "max_position_embeddings", 2048))
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else {self.tokenizer.eos_token_id}
        torch.manual_seed(seed)

    def budget(self) -> TokenBudget:
        return TokenBudget(self.tokenizer, self.max_model_len)

    def answer(self, convs: list[list[dict[str, str]]], samplings: list[Sampling], *, on_done: OnDone | None,
               on_tick: OnTick | None) -> list[ChatOut]:  # fmt: skip
        """Runs of conversations with the same Sampling go through `generate` together, `batch_size` at a time;
        `on_done(completions, tokens)` after each generate call."""
        if any(s.top_logprobs for s in samplings):
            raise PrefdataError("the transformers engine gives no log-probs; a judge in logprob mode needs vllm or openai")
        out: list[ChatOut] = []
        start = 0
        while start < len(convs):  # a run of one Sampling, cut into batches
            s = samplings[start]
            end = start
            while end < len(convs) and end - start < self.batch_size and samplings[end] == s:
                end += 1
            encoded = [chat_token_ids(self.tokenizer, c) for c in convs[start:end]]
            out.extend(answered(comps) for comps in self._generate(encoded, s, on_done))
            start = end
        return out

    def _generate(self, encoded: list[list[int]], s: Sampling, on_done: OnDone | None) -> list[list[Completion]]:
        import torch

        batch = self.tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt")
        gen: dict[str, Any] = {
            "max_new_tokens": s.max_tokens,
            "num_return_sequences": s.count,
            "pad_token_id": self.tokenizer.pad_token_id,
            "repetition_penalty": s.repetition_penalty,
        }
        if not s.greedy:
            gen.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None, min_p=s.min_p or None)
        else:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop:
            gen.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(**batch, **gen)
        new = out[:, batch["input_ids"].shape[1] :]
        result: list[list[Completion]] = [[] for _ in encoded]
        done_tokens = 0
        for k in range(new.shape[0]):
            toks = new[k].tolist()
            n_tok, finish = len(toks), "length"
            for pos, t in enumerate(toks):
                if t in self.eos_ids:
                    n_tok, finish = pos + 1, "stop"
                    break
            text = self.tokenizer.decode(toks[:n_tok], skip_special_tokens=True)
            for stop in s.stop:  # a stop string ends the text; one found in a reply cut at the cap makes it a "stop"
                if stop in text:
                    text = text[: text.index(stop)]
                    finish = "stop"
            result[k // s.count].append(Completion(text=text, finish_reason=finish, n_tokens=n_tok))
            done_tokens += n_tok
        if on_done is not None:
            on_done(new.shape[0], done_tokens)
        return result


def open_model(spec: ModelSpec, llm: Any = None) -> HFChatModel:
    if spec.model is None:
        raise PrefdataError("the transformers engine needs a model folder or hub name")
    return HFChatModel(spec.model, dtype=spec.dtype, seed=spec.seed, max_model_len=spec.max_model_len,
                       batch_size=spec.batch_size, label=spec.label)  # fmt: skip
