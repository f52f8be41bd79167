"""Evaluation: a checkpoint against a baseline on held-out prompts (`run`, built from generate and rank), a judge
against human labels (`judge_eval`), and the statistics both report (`stats`: Wilson intervals, length-controlled
win rate)."""
