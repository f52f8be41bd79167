"""Reference log-probs under multi-process training (DDP, FSDP, DeepSpeed): computed once, not once per rank.

Why: the reference pass is a full forward over the dataset. Before, every process ran it on every pair, so 8 GPUs
did the same work 8 times. Now rank r scores pairs r, r+W, r+2W, ... and the results are all-gathered, so the pass
takes 1/W of the time (processes that did not load the weights, e.g. FSDP's cpu_ram_efficient_loading, score
nothing and wait); rank 0 alone reads or writes the cache file and broadcasts what it read (the cache folder
need not be shared between nodes). A single process is unchanged: `cached_logps` as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prefdata.errors import PrefdataError
from prefdata.train.data import cached_logps

Logps = tuple[np.ndarray, np.ndarray]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without an initialized process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def has_weights(model: Any) -> bool:
    """Whether this process holds the model's full weights (not meta tensors, not ZeRO-3 partitions).

    Under FSDP with `cpu_ram_efficient_loading` only local rank 0 loads the weights before wrapping; under
    DeepSpeed ZeRO-3 `zero.Init` every rank holds a partition. A reference pass on such a copy would be garbage.
    """
    for p in model.parameters():
        if p.is_meta or (getattr(p, "ds_id", None) is not None and p.numel() == 0):
            return False
    return True


def shared_logps(
    cache_dir: Path | None, key: str, n: int, compute_rows: Callable[[list[int]], Logps], can_compute: bool = True
) -> Logps:
    """The (chosen, rejected) reference log-probs of all `n` pairs, computed at most once across all processes.

    `compute_rows(rows)` scores the given row indices. Every process must call this with the same arguments
    (it is a collective: a broadcast, then an all-gather when the cache has no entry). Processes with
    `can_compute` False (no full weights, see `has_weights`) score nothing; the others split the pairs.
    """
    rank, world = rank_and_world()
    if world == 1:
        return cached_logps(cache_dir, key, lambda: compute_rows(list(range(n))))
    import torch.distributed as dist

    cached: list[Logps | None] = [None]
    if rank == 0 and cache_dir is not None and (cache_dir / f"{key}.npz").is_file():
        cached[0] = cached_logps(cache_dir, key, _never)
    dist.broadcast_object_list(cached, src=0)
    if cached[0] is not None:
        return cached[0]
    able: list[bool | None] = [None] * world
    dist.all_gather_object(able, bool(can_compute))
    workers = [r for r in range(world) if able[r]]
    if not workers:
        raise PrefdataError(
            "no process holds the full reference weights (DeepSpeed zero3_init_flag / ZeRO-3 partitions): set "
            "zero3_init_flag: false in the accelerate config, or compute the reference cache in a run without ZeRO-3"
        )
    rows = list(range(workers.index(rank), n, len(workers))) if rank in workers else []
    mine = compute_rows(rows) if rows else (np.zeros(0), np.zeros(0))
    parts: list[tuple[list[int], np.ndarray, np.ndarray] | None] = [None] * world
    dist.all_gather_object(parts, (rows, mine[0], mine[1]))
    chosen, rejected = np.zeros(n), np.zeros(n)
    for part in parts:
        assert part is not None
        idx, c, r = part
        chosen[idx], rejected[idx] = c, r
    if rank == 0 and cache_dir is not None:
        cached_logps(cache_dir, key, lambda: (chosen, rejected))  # writes the file (atomically)
    return chosen, rejected


def _never() -> Logps:
    raise AssertionError("the cache file was just seen; it is read, not computed")
