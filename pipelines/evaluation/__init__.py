"""Batch evaluation pieces: per-query results, scoring, the Say score, prediction files, overlays.

The Ray entry point is ``pipelines/evaluate.py``; everything here is plain Python/numpy so it can be
tested without Ray and reused by other tools (e.g. a notebook reading a predictions JSONL).
"""
