"""Two training processes (DDP over gloo, on CPU) against one: same losses, one shared reference pass, a model.

The launcher is `accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1: accelerate 1.x runs
`--cpu --num_processes 2` as a single process unless an MPI hostfile is given, and `--multi_gpu` alone on a machine
without GPUs starts two processes that do NOT synchronize (transformers sees no distributed state).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import pair_rows, write_jsonl

SCRIPT = Path(__file__).with_name("ddp_train.py")


def _run(args: list[str], out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(f.read_text()) for f in sorted(out.glob("rank-*.json"))]


def test_two_processes_match_one_and_share_the_reference_pass(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip

    def ddp(name: str, cache: str) -> list[dict]:
        return _run([*launch, str(SCRIPT), str(data), str(tiny_llama_dir), str(tmp_path / name), "2", cache], tmp_path / name)

    two = ddp("ddp", str(tmp_path / "cache-ddp"))
    (one,) = _run([sys.executable, str(SCRIPT), str(data), str(tiny_llama_dir), str(tmp_path / "single"), "4",
                   str(tmp_path / "cache-single")], tmp_path / "single")  # fmt: skip

    # the same global batch (2 processes x 2 pairs = 1 x 4 pairs) gives the same losses
    assert [r["world"] for r in two] == [2, 2] and one["world"] == 1
    for r in two:
        assert r["global_step"] == one["global_step"] == 2
        for key in ("first_loss", "last_loss", "train_loss"):
            assert r[key] == pytest.approx(one[key], abs=1e-4), key

    # the reference pass ran once over the 8 pairs in total, 4 per process (before: 8 on each)
    assert one["ref_rows_forwarded"] == 8
    assert [r["ref_rows_forwarded"] for r in two] == [4, 4]
    assert [r["ref_pairs_computed"] for r in two] == [4, 4]

    # the saved model loads, and it is the single-process model (float32 on disk)
    ddp_model = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "model")
    single_model = AutoModelForCausalLM.from_pretrained(tmp_path / "single" / "model")
    for (name, a), b in zip(ddp_model.state_dict().items(), single_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2, msg=name)

    # the cache rank 0 wrote is read by rank 0 and broadcast: a rerun forwards no reference pair at all
    again = ddp("ddp-again", str(tmp_path / "cache-ddp"))
    assert [r["ref_rows_forwarded"] for r in again] == [0, 0]
    assert [r["first_loss"] for r in again] == pytest.approx([one["first_loss"]] * 2, abs=1e-4)


def test_lora_under_two_processes_matches_one(tmp_path, tiny_llama_dir):
    """LoRA's random A matrices are seeded: DDP (which broadcasts rank 0's) trains what one process trains."""
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip
    two = _run([*launch, str(SCRIPT), str(data), str(tiny_llama_dir), str(tmp_path / "ddp"), "2", str(tmp_path / "c1"), "4"],
               tmp_path / "ddp")  # fmt: skip
    (one,) = _run([sys.executable, str(SCRIPT), str(data), str(tiny_llama_dir), str(tmp_path / "single"), "4",
                   str(tmp_path / "c2"), "4"], tmp_path / "single")  # fmt: skip
    assert [r["ref_rows_forwarded"] for r in two] == [4, 4] and one["ref_rows_forwarded"] == 8
    for r in two:
        for key in ("first_loss", "last_loss", "train_loss"):
            assert r[key] == pytest.approx(one[key], abs=1e-4), key
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "model", dtype="auto")
    assert merged.dtype == torch.float32  # the merged model, saved in float32 (--save-dtype's default)


def test_a_process_without_the_weights_does_not_score_the_reference(tiny_llama_dir):
    """FSDP's cpu_ram_efficient_loading leaves ranks > 0 with meta weights: they must not compute garbage."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefdata.train.distributed import has_weights, shared_logps

    assert has_weights(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    with torch.device("meta"):
        assert not has_weights(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama_dir)))
    # one process: the rows are scored here and nothing else happens (no process group, no cache)
    import numpy as np

    c, r = shared_logps(None, "k", 3, lambda rows: (np.array(rows, float), -np.array(rows, float)))
    assert c.tolist() == [0, 1, 2] and r.tolist() == [0, -1, -2]
