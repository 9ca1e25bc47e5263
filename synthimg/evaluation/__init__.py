"""Evaluation: zero-shot and linear-probe accuracy on a task's splits, written as results.jsonl lines."""
