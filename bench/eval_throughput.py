"""Evaluation throughput: batched KV-cache generation against upstream's batch-1, no-cache loop.

    python bench/eval_throughput.py [--queries 32] [--batch 16] [--max-new-tokens 32]
                                    [--config configs/tiny.yaml] [--model-dir DIR] [--device cpu]

Upstream generates one query at a time with ``use_cache=False``, so every decoding step re-runs
the whole sequence, image tokens included (`READ:model/READ.py` evaluate). The project's
``ReadModel.predict`` batches queries (left padding) and decodes with the KV cache. Both paths
here share everything else (preprocessing, the final forward pass, SasP, SAM) and generate the
same number of tokens (EOS is suppressed), so the ratio isolates batching + caching. Both run in
this process on the same weights; the script prints queries/s of each, the ratio, and whether the
two paths generated the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

QUESTION = "What is the {} shape in this image? Please output segmentation mask."
COLOURS = ("red", "blue", "green", "yellow")


def generate_without_cache(self, input_ids, attention_mask, row_features, max_new_tokens):
    """Upstream's decoding: greedy, and the full sequence is re-encoded at every step."""
    ids = self.token_ids
    tokens, mask = input_ids, attention_mask
    out_ids, out_mask = [], []
    for _ in range(max_new_tokens):
        hidden, _ = self.language_forward(tokens, mask, row_features)
        logits = self.lm_logits(hidden[:, -1]).float()
        logits[:, ids.image] = float("-inf")
        logits[:, ids.eos] = float("-inf")  # fixed length: both paths do the same work
        next_ids = logits.argmax(-1)
        out_ids.append(next_ids)
        out_mask.append(torch.ones_like(next_ids, dtype=attention_mask.dtype))
        tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
        mask = torch.cat([mask, out_mask[-1][:, None]], dim=1)
    return torch.stack(out_ids, 1), torch.stack(out_mask, 1)


def _no_eos(model):
    """The cached generator with EOS suppressed, so both paths emit max_new_tokens tokens."""
    original = model.lm_logits

    def lm_logits(self, hidden):
        logits = original(hidden).clone()
        logits[..., self.token_ids.eos] = float("-inf")
        return logits

    return types.MethodType(lm_logits, model)


def _inputs(count: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(200, 400, size=(count, 2))
    images = [rng.integers(0, 255, (int(h), int(w), 3), dtype=np.uint8) for h, w in sizes]
    questions = [QUESTION.format(COLOURS[i % len(COLOURS)]) for i in range(count)]
    return images, questions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    parser.add_argument("--model-dir", help="a saved model directory (default: the config's random init)")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from pipelines.config import load_job_config
    from read_model.config import ConfigError
    from read_model.model import build_model

    try:
        if args.model_dir:
            from read_model.checkpoint import load_model_dir

            model = load_model_dir(args.model_dir)[0]  # validates the stored config first
        else:
            model = build_model(load_job_config(args.config).model)[0]
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = model.to(args.device).eval()
    images, questions = _inputs(args.queries, args.seed)

    model.lm_logits = _no_eos(model)
    model.predict(images[:2], questions[:2], max_new_tokens=2)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    batched = []
    for i in range(0, args.queries, args.batch):
        batched += model.predict(images[i:i + args.batch], questions[i:i + args.batch],
                                 max_new_tokens=args.max_new_tokens)
    batched_s = time.perf_counter() - start
    del model.lm_logits  # back to the class method for the upstream-style path

    model.generate_greedy = types.MethodType(generate_without_cache, model)
    model.predict(images[:1], questions[:1], max_new_tokens=2)
    start = time.perf_counter()
    single = [model.predict([img], [q], max_new_tokens=args.max_new_tokens)[0]
              for img, q in zip(images, questions, strict=True)]
    single_s = time.perf_counter() - start

    same = sum(a.token_ids == b.token_ids for a, b in zip(batched, single, strict=True))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {device}; torch threads: {torch.get_num_threads()}; queries: {args.queries}; "
          f"new tokens per query: {args.max_new_tokens}")
    print(f"batched ({args.batch}) + KV cache : {args.queries / batched_s:8.2f} queries/s "
          f"({batched_s:.2f} s)")
    print(f"batch 1, no cache (upstream) : {args.queries / single_s:8.2f} queries/s "
          f"({single_s:.2f} s)")
    print(f"speed-up: {single_s / batched_s:.2f}x; identical generated tokens: "
          f"{same}/{args.queries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
