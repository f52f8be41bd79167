"""Write the bundled arithmetic prompt sets (seeded, so the files are reproducible byte for byte).

    python scripts/make_arithmetic.py            # writes prefdata/data/arithmetic.jsonl and arithmetic_eval.jsonl

Problems: two-digit addition, two-digit subtraction (never negative) and one-digit times two-digit
multiplication, each phrased in a few ways, with the answer in the `answer` field (use it as the verifier's
reference: `--reference-field answer`). The eval file holds problems that are not in the training file: the
split is by the problem itself (operation and operands), so no phrasing of an eval problem is trained on.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "prefdata" / "data"

WORDS = {"+": "plus", "-": "minus", "*": "times"}
SYMBOLS = {"+": "+", "-": "-", "*": "×"}
PHRASES = (
    "What is {a} {s} {b}?",
    "Compute {a} {s} {b}.",
    "Calculate {a} {w} {b}.",
    "{a} {s} {b} = ?",
    "What is {a} {w} {b}? Answer with just the number.",
    "Solve: {a} {s} {b}",
)


def problems() -> list[tuple[str, int, int]]:
    out = [("+", a, b) for a in range(10, 100) for b in range(10, 100)]
    out += [("-", a, b) for a in range(10, 100) for b in range(10, a + 1)]
    out += [("*", a, b) for a in range(2, 10) for b in range(10, 100)]
    return out


def answer(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def row(i: int, split: str, op: str, a: int, b: int, rng: random.Random) -> dict[str, object]:
    phrase = rng.choice(PHRASES)
    return {"id": f"arith-{split}-{i:05d}", "prompt": phrase.format(a=a, b=b, s=SYMBOLS[op], w=WORDS[op]),
            "answer": str(answer(op, a, b)), "op": op, "a": a, "b": b}


def build(n_train: int, n_eval: int, seed: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """About equal thirds per operation; eval problems are drawn first and never reused for training."""
    rng = random.Random(seed)
    by_op: dict[str, list[tuple[str, int, int]]] = {}
    for p in problems():
        by_op.setdefault(p[0], []).append(p)
    train: list[tuple[str, int, int]] = []
    evals: list[tuple[str, int, int]] = []
    left = n_train
    for k, op in enumerate(("*", "-", "+")):  # multiplication has the fewest problems: it takes what it has first
        pool = by_op[op]
        rng.shuffle(pool)
        ne = n_eval // 3 + (k < n_eval % 3)
        nt = min(len(pool) - ne, left // (3 - k))
        left -= nt
        evals += pool[:ne]
        train += pool[ne : ne + nt]
    rng.shuffle(train)
    rng.shuffle(evals)
    return ([row(i, "train", *p, rng) for i, p in enumerate(train)], [row(i, "eval", *p, rng) for i, p in enumerate(evals)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--eval", type=int, default=500)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    train, evals = build(args.train, args.eval, args.seed)
    for name, rows in (("arithmetic.jsonl", train), ("arithmetic_eval.jsonl", evals)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(rows)} problems to {args.out / name}")


if __name__ == "__main__":
    main()
