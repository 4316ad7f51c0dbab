"""Conversion of released READ / LISA / SESAME checkpoints (LLaVA-original layout).

`read_model.convert` is the entry point; the modules here each own one step: reading tensors
lazily (`tensors`), renaming keys and folding LoRA (`keys`), recovering architecture settings
from weights (`shapes`) and making the tokenizer fit llava-hf (`tokens`).
"""
