"""bench/gpu_suite.sh on a GPU image without torchvision and PIL: the announced stand-ins let the
project's own preprocessing and collation run (in a subprocess where both imports fail)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys
sys.modules["PIL"] = None            # import PIL -> ImportError, as on an image without it
sys.modules["torchvision"] = None
sys.path[:0] = [{repo!r}, {bench!r}]
import gpu_fallbacks
notes = gpu_fallbacks.install()
import numpy as np
from read_model.batch import ReadExample, collate_train
from read_model.presets import load_model_config
from read_model.tokenizer import load_tokenizer
config = load_model_config("tiny")
tokenizer = load_tokenizer(config.tokenizer)
mask = np.zeros((70, 90), np.uint8); mask[10:30, 20:50] = 1
example = ReadExample(np.full((70, 90, 3), 128, np.uint8),
                      [("<image>\\nWhere is it?", "It is [SEG].")], [mask])
batch = collate_train([example], tokenizer, config, 196)
from read_model.preprocess import clip_frames, sam_frames
clip = clip_frames(batch.images, batch.original_sizes, config.llava.vision_image_size)
sam, resized = sam_frames(batch.images, batch.original_sizes, config.sam.image_size)
assert resized == batch.resized_sizes
print(json.dumps({{"notes": notes, "clip": list(clip.shape),
                   "sam": list(sam.shape), "resized": resized}}))
"""


def test_preprocessing_runs_on_stand_ins():
    code = SCRIPT.format(repo=str(REPO), bench=str(REPO / "bench"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["notes"]) == 2 and all("stand-in" in n for n in result["notes"])
    assert result["clip"] == [1, 3, 112, 112]
    assert result["sam"] == [1, 3, 256, 256]
    assert [tuple(s) for s in result["resized"]] == [(199, 256)]  # 70x90 -> long side 256
