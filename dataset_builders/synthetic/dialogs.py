"""Synthetic LLaVA-Instruct-style conversations about a scene (upstream's VQA source).

Entries follow `llava_dataset/llava_instruct_150k.json`: ``{"id", "image", "conversations":
[{"from": "human"|"gpt", "value"}]}``. The first human message holds ``<image>``, usually in
front and sometimes after the question (the reader moves it, as upstream does); a few entries
open with an assistant greeting, which the reader drops as upstream does. Answers state facts of
the scene, so they are learnable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dataset_builders.synthetic.scene import Scene, location_phrase

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
OPENERS = ("What shapes are in this picture?", "Describe the shapes you see.",
           "Which objects does this image show?")
IMAGE_AFTER_PROB = 0.25  # "<question>\n<image>" instead of "<image>\n<question>"
GREETING_PROB = 0.1  # an assistant message first (upstream drops it)
GREETING = "Hello! Ask me anything about the picture."


def _listing(scene: Scene) -> str:
    names = [f"a {s.colour} {s.kind}" for s in scene.shapes]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def _follow_ups(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    kinds = [s.kind for s in scene.shapes]
    options = []
    for shape in scene.shapes:
        if kinds.count(shape.kind) == 1:
            options.append((f"What colour is the {shape.kind}?",
                            f"The {shape.kind} is {shape.colour}."))
        options.append((f"Where is the {shape.colour} {shape.kind}?",
                        f"It is {location_phrase(shape, scene)}."))
    count = int(rng.integers(0, min(2, len(options)) + 1))
    picks = rng.choice(len(options), size=count, replace=False) if count else []
    return [options[int(i)] for i in picks]


def vqa_entry(entry_id: str, image_name: str, scene: Scene,
              rng: np.random.Generator) -> dict[str, Any]:
    """One conversation entry about `scene`, 1 to 3 rounds."""
    opener = OPENERS[int(rng.integers(len(OPENERS)))]
    count = NUMBERS.get(len(scene.shapes), str(len(scene.shapes)))
    first = f"{opener}\n<image>" if rng.random() < IMAGE_AFTER_PROB else f"<image>\n{opener}"
    messages = [{"from": "human", "value": first},
                {"from": "gpt", "value": f"There are {count} shapes: {_listing(scene)}."}]
    for question, answer in _follow_ups(scene, rng):
        messages += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    if rng.random() < GREETING_PROB:
        messages.insert(0, {"from": "gpt", "value": GREETING})
    return {"id": entry_id, "image": image_name, "conversations": messages}
