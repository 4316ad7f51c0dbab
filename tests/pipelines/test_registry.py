"""Registry round trip on a local MLflow store: log + register as `candidate`, load, predict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipelines.config import load_job_config
from pipelines.registry import RegistryError, load_registered, log_and_register, set_alias
from read_model.checkpoint import save_trainable
from read_model.model import build_model


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_register_and_load_back(tmp_path, tracking_uri):
    config = load_job_config("configs/tiny.yaml").model
    model, tokenizer = build_model(config)
    with torch.no_grad():  # make the stored weights differ from a freshly built model
        model.projection.requires_grad_(True)
        for param in model.projection.parameters():
            param.add_(0.5)
    model_dir = save_trainable(model, tokenizer, config, tmp_path / "model")
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("registry-test",
                                          artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(experiment).info.run_id

    first = log_and_register(model_dir, "read-test", run_id, tracking_uri=tracking_uri)
    second = log_and_register(model_dir, "read-test", run_id, tracking_uri=tracking_uri)
    assert (first, second) == ("1", "2")
    assert str(client.get_model_version_by_alias("read-test", "candidate").version) == "2"
    set_alias("read-test", "champion", first, tracking_uri=tracking_uri)

    loaded, _, loaded_config = load_registered("models:/read-test@champion",
                                               tracking_uri=tracking_uri,
                                               destination=tmp_path / "download")
    assert loaded_config.llava.text_hidden_size == config.llava.text_hidden_size
    for (name, original), restored in zip(model.projection.state_dict().items(),
                                          loaded.projection.state_dict().values(), strict=True):
        assert torch.equal(original, restored), name
    image = np.full((48, 64, 3), 90, dtype=np.uint8)
    [prediction] = loaded.eval().predict([image], ["<image>\nWhat is the circle in this image? "
                                                   "Please output segmentation mask."],
                                         max_new_tokens=4)
    assert isinstance(prediction.text, str)
    assert prediction.masks.shape[1:] == (48, 64) or prediction.masks.shape[0] == 0


def test_registering_an_empty_folder_is_refused(tmp_path, tracking_uri):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="not a non-empty model directory"):
        log_and_register(tmp_path / "empty", "read-test", "no-run", tracking_uri=tracking_uri)


def test_unknown_model_is_a_clear_error(tmp_path, tracking_uri):
    MlflowClient(tracking_uri).search_experiments()  # create the store
    with pytest.raises(RegistryError, match="models:/nope@candidate"):
        load_registered("models:/nope@candidate", tracking_uri=tracking_uri,
                        destination=tmp_path / "d")


def test_only_self_contained_checkpoints_answer_the_input_example_at_logging(tmp_path):
    """A 7B checkpoint names its base weights by path; logging must not load them in the driver."""
    import json

    from pipelines.registry import is_self_contained
    from read_model.checkpoint import CONFIG_FILE

    for name, llava_path, sam_checkpoint, expected in [
        ("tiny", "", "", True),
        ("llava", "/models/llava-1.5-7b-hf", "", False),
        ("sam", "", "/models/sam_vit_h_4b8939.pth", False),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / CONFIG_FILE).write_text(json.dumps(
            {"llava": {"path": llava_path}, "sam": {"checkpoint": sam_checkpoint}}))
        assert is_self_contained(folder) is expected, name
