"""`ReadPythonModel`: the pyfunc face of a READ checkpoint (load once, answer DataFrame rows)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from pipelines.mlflow_model import schema

CHECKPOINT_ARTIFACT = "checkpoint"  # the `artifacts` key that holds the READ checkpoint folder
ROWS_PER_FORWARD = 8  # questions answered in one batched `ReadModel.predict` call


class ReadPythonModel(PythonModel):
    """Loads the checkpoint artifact with safetensors; answers each row with `ReadModel.predict`."""

    def load_context(self, context: Any) -> None:
        import torch

        from read_model.checkpoint import load_model_dir

        model, _, _ = load_model_dir(context.artifacts[CHECKPOINT_ARTIFACT])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device).eval()
        # A server may call predict from several threads; the prompt mode is switched per call.
        self._lock = threading.Lock()

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            max_new_tokens = schema.max_new_tokens_of(params)
            trained_mode = self.model.config.prompt_mode
            modes = model_input.get(schema.PROMPT_MODE, pd.Series([None] * len(model_input)))
            rows = [
                (schema.decode_image(image, i), str(question),
                 schema.prompt_mode_of(mode, trained_mode, i))
                for i, (image, question, mode) in enumerate(
                    zip(model_input[schema.IMAGE], model_input[schema.QUESTION], modes, strict=True))
            ]
        except schema.InputError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from error
        outputs: list[dict[str, Any] | None] = [None] * len(rows)
        with self._lock:
            for mode in sorted({mode for _, _, mode in rows}):
                picked = [i for i, row in enumerate(rows) if row[2] == mode]
                with self._prompt_mode(mode):
                    for start in range(0, len(picked), ROWS_PER_FORWARD):
                        chunk = picked[start:start + ROWS_PER_FORWARD]
                        predictions = self.model.predict(
                            [rows[i][0] for i in chunk], [rows[i][1] for i in chunk],
                            max_new_tokens)
                        for i, prediction in zip(chunk, predictions, strict=True):
                            outputs[i] = schema.output_row(prediction)
        return pd.DataFrame(outputs, columns=[schema.ANSWER, schema.SEE, schema.MASKS,
                                              schema.POINTS, schema.POINT_LABELS])

    @contextmanager
    def _prompt_mode(self, mode: str) -> Iterator[None]:
        """Answer with `mode`, then restore the model's own config."""
        original = self.model.config
        self.model.config = dataclasses.replace(original, prompt_mode=mode)
        try:
            yield
        finally:
            self.model.config = original
