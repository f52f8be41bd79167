"""Run `prefdata train` (the real CLI) in a child process that SIGKILLs itself at one chosen point.

    python tests/train_child.py KILL_AT -- train ARGS...

KILL_AT names where the kill -9 lands, so tests that kill training are deterministic:
- `none`: no kill;
- `step:N`: in the forward pass of the step after step N;
- `save:N:weights`: inside the save of checkpoint-N, after the model weights, before the optimizer state;
- `save:N:marker`: inside the save of checkpoint-N, after every trainer file, before the completion marker;
- `final`: after training, once the final model is written in its save dtype (before the summary).
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(kill_at: str) -> None:
    import prefdata.train.run as run_mod
    import prefdata.train.trainer as trainer_mod
    from prefdata.train.trainer import AIPOTrainer

    if kill_at == "none":
        return
    kind, *rest = kill_at.split(":")
    if kind == "step":
        n = int(rest[0])
        original_loss = AIPOTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            if self.model.training and self.state.global_step == n:
                _die()
            return original_loss(self, *args, **kwargs)

        AIPOTrainer.compute_loss = compute_loss
    elif kind == "save":
        n, phase = int(rest[0]), rest[1]
        if phase == "weights":
            original_opt = AIPOTrainer._save_optimizer_and_scheduler

            def save_opt(self, output_dir):
                if self.state.global_step == n:
                    _die()
                return original_opt(self, output_dir)

            AIPOTrainer._save_optimizer_and_scheduler = save_opt
        else:
            original_marker = trainer_mod.write_marker

            def write_marker(checkpoint, identity):
                if checkpoint.name == f"checkpoint-{n}":
                    _die()
                return original_marker(checkpoint, identity)

            trainer_mod.write_marker = write_marker
    elif kind == "final":
        original_save = run_mod.to_dtype_safetensors

        def to_dtype(folder, dtype):
            original_save(folder, dtype)
            _die()

        run_mod.to_dtype_safetensors = to_dtype
    else:
        raise SystemExit(f"unknown kill point {kill_at}")


if __name__ == "__main__":
    kill_at, sep, *argv = sys.argv[1:]
    assert sep == "--"
    install(kill_at)
    from prefdata.cli import main

    main(argv)
