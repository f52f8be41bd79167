"""transformers `generate` as the fallback backend (no vLLM): left padding, `num_return_sequences`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefdata.errors import PrefdataError
from prefdata.llm.context import chat_token_ids
from prefdata.llm.hardware import resolve_dtype
from prefdata.samplers import Completion, SampleSpec


class HFSampler:
    name = "hf"

    def __init__(self, cfg: Any, model_path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            self.dtype = resolve_dtype(cfg.dtype)
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
        self.max_model_len = int(cfg.max_model_len or getattr(self.model.config, "max_position_embeddings", 2048))
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else {self.tokenizer.eos_token_id}
        torch.manual_seed(cfg.seed)

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_token_ids(self.tokenizer, messages)

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self._encode(messages))

    def sample(self, conversations: list[list[dict[str, str]]], plan: list[SampleSpec],
               on_done: Callable[[int, int], None] | None = None) -> list[list[list[Completion]]]:
        """out[prompt][plan entry]; `on_done(completions, tokens)` after each generate call."""
        import torch

        c = self.cfg
        result: list[list[list[Completion]]] = [[[] for _ in plan] for _ in conversations]
        encoded = [self._encode(m) for m in conversations]
        mb = max(1, c.hf_batch_size)
        for j, spec in enumerate(plan):
            for start in range(0, len(encoded), mb):
                chunk = encoded[start : start + mb]
                batch = self.tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt")
                gen: dict[str, Any] = {
                    "max_new_tokens": c.max_tokens,
                    "num_return_sequences": spec.n,
                    "pad_token_id": self.tokenizer.pad_token_id,
                    "repetition_penalty": c.repetition_penalty,
                }
                if spec.temperature > 0:
                    gen.update(do_sample=True, temperature=spec.temperature, top_p=c.top_p, top_k=c.top_k or None, min_p=c.min_p or None)
                else:
                    gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if c.stop:
                    gen.update(stop_strings=list(c.stop), tokenizer=self.tokenizer)
                with torch.inference_mode():
                    out = self.model.generate(**batch, **gen)
                new = out[:, batch["input_ids"].shape[1] :]
                done_tokens = 0
                for k in range(new.shape[0]):
                    i = start + k // spec.n
                    toks = new[k].tolist()
                    n_tok, finish = len(toks), "length"
                    for pos, t in enumerate(toks):
                        if t in self.eos_ids:
                            n_tok, finish = pos + 1, "stop"
                            break
                    text = self.tokenizer.decode(toks[:n_tok], skip_special_tokens=True)
                    if c.stop and finish == "length":
                        for s in c.stop:
                            if s in text:
                                text, finish = text[: text.index(s)], "stop"
                    elif c.stop:
                        for s in c.stop:
                            if s in text:
                                text = text[: text.index(s)]
                    result[i][j].append(Completion(text=text, finish_reason=finish, n_tokens=n_tok))
                    done_tokens += n_tok
                if on_done is not None:
                    on_done(new.shape[0], done_tokens)
        return result
