"""The serving pieces without Ray: input checks, answers, pictures, the replica's batching and
alias roll-over logic, deployment sizing from the presets."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import seg_answering_model

from pipelines.config import load_job_config
from pipelines.evaluation.predictions_io import decode_rle
from pipelines.predict import full_resolution_heatmap
from pipelines.serving.app import (
    app_builder,
    ingress_deployment_options,
    model_deployment_options,
    model_reference,
)
from pipelines.serving.errors import ModelFailure
from pipelines.serving.figures import display_size, overlay_pictures
from pipelines.serving.model_server import ReadModelServer
from pipelines.serving.model_source import (
    ModelSourceError,
    RegistryReference,
    ServedModel,
)
from pipelines.serving.queries import (
    RequestError,
    RequestLimits,
    check_fields,
    check_prompt_mode,
    check_question,
    decode_image,
    query_from_fields,
)
from pipelines.serving.results import result_from_prediction
from read_model.config import ConfigError, TokenizerConfig
from read_model.overlay import POSITIVE_COLOUR

torch.set_num_threads(1)
LIMITS = RequestLimits(max_upload_bytes=200_000, max_image_pixels=10_000, max_question_chars=50,
                       forbidden_tokens=("<image>", "[SEG]", "<im_start>", "<im_end>"))
QUESTION = "Where is the red circle?"


def png_bytes(width: int, height: int, colour=(128, 128, 128)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` whose pixel data is a few bytes (it cannot decode)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


# ---------------------------------------------------------------------------------------------
# Request checks


def test_a_valid_image_decodes_to_rgb_uint8() -> None:
    image = decode_image(png_bytes(40, 30, (10, 20, 30)), LIMITS)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (10, 20, 30)


def test_camera_orientation_is_applied() -> None:
    """A phone JPEG stored landscape with EXIF 'rotate 90' arrives portrait."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), LIMITS).shape == (40, 20, 3)


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty file"),
    (b"GIF89a not really", 415, "not an image"),
    (b"plain text, no picture", 415, "not an image"),
    (png_bytes(40, 30)[:60], 415, "damaged image"),
    (png_bytes(200, 100), 413, "20000 pixels, above the limit of 10000"),
    (png_header_only(5000, 5000), 413, "5000x5000 = 25000000 pixels"),  # checked before decoding
    (png_header_only(100_000, 100_000), 413, "decompression bomb"),
    (b"x" * 200_001, 413, "above the limit of 200000 bytes"),
])
def test_bad_images_are_refused_with_a_reason(data: bytes, status: int, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.status == status
    assert words in caught.value.reason and "\n" not in caught.value.reason


@pytest.mark.parametrize("question,words", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("x" * 51, "51 characters, above the limit of 50"),
    ("Where is it? [SEG]", "control token '[SEG]'"),
    ("<image>\nWhere is it?", "control token '<image>'"),
])
def test_bad_questions_are_refused(question: str, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_question(question, LIMITS)
    assert caught.value.status == 400 and words in caught.value.reason


def test_a_question_at_the_limit_is_accepted_and_trimmed() -> None:
    assert check_question("  " + "q" * 50 + " ", LIMITS) == "q" * 50


def test_prompt_modes() -> None:
    assert check_prompt_mode("") is None
    assert check_prompt_mode("seg_only") == "seg_only"
    with pytest.raises(RequestError, match="not one of seg_only, points_discrete, points_dtoc"):
        check_prompt_mode("points")


@pytest.mark.parametrize("items,words", [
    ([("image", b""), ("question", "q"), ("colour", "red")], "unknown field(s) 'colour'"),
    ([("image", b""), ("question", "q"), ("question", "r")], "'question' given more than once"),
    ([("question", "q")], "missing field(s) 'image'"),
    ([("image", b"")], "missing field(s) 'question'"),
])
def test_form_fields_are_checked(items, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        check_fields(items)
    assert caught.value.status == 400 and words in caught.value.reason


def test_overlay_flag_and_file_fields() -> None:
    fields = {"question": QUESTION, "overlay": "yes", "prompt_mode": "points_discrete"}
    query, overlay = query_from_fields(fields, png_bytes(20, 10), LIMITS)
    assert overlay and query.with_heatmap and query.prompt_mode == "points_discrete"
    with pytest.raises(RequestError, match="'overlay' must be true or false"):
        query_from_fields({**fields, "overlay": "maybe"}, png_bytes(20, 10), LIMITS)
    with pytest.raises(RequestError, match="'question' must be text"):
        query_from_fields({**fields, "question": object()}, png_bytes(20, 10), LIMITS)


def test_limits_forbid_the_configured_control_tokens() -> None:
    job = load_job_config("configs/tiny.yaml")
    limits = RequestLimits.from_config(job.serve, TokenizerConfig(seg_token="<seg>"))
    assert "<seg>" in limits.forbidden_tokens and "[SEG]" not in limits.forbidden_tokens
    assert limits.max_image_pixels == job.serve.max_image_pixels


# ---------------------------------------------------------------------------------------------
# Answers and pictures


@pytest.fixture(scope="module")
def seg_model():
    model, _ = seg_answering_model()
    return model.eval()


def shapes_image() -> np.ndarray:
    image = np.full((96, 128, 3), 128, np.uint8)
    image[20:60, 15:55] = (220, 30, 30)
    image[40:80, 75:115] = (30, 30, 220)
    return image


def test_result_carries_the_models_masks_points_and_heatmap(seg_model) -> None:
    image = shapes_image()
    [prediction] = seg_model.predict([image], [QUESTION], 2)
    served = {"name": "read-tiny", "version": "3", "source": "models:/read-tiny@champion"}
    result = result_from_prediction(seg_model, prediction, (96, 128), prompt_mode="points_dtoc",
                                    served=served, batch_size=1, with_heatmap=True)
    body = result.to_json()
    assert body["answer"] == "[SEG][SEG]" and body["num_seg"] == 2
    assert body["see"] is bool(prediction.exists)
    for rle, mask in zip(body["masks"], prediction.masks, strict=True):
        assert np.array_equal(decode_rle(rle), mask.numpy())
    assert np.allclose(body["points"], prediction.points.numpy())
    assert body["point_labels"] == prediction.labels.tolist()
    assert body["model"]["version"] == "3" and body["image_size"] == [96, 128]
    assert result.heatmap is not None and result.heatmap.shape == (96, 128)
    full = full_resolution_heatmap(seg_model, prediction, (96, 128))  # what read-predict draws
    assert result.heatmap.dtype == np.uint8
    assert np.abs(result.heatmap / 255.0 - full).max() <= 0.5 / 255 + 1e-6  # quantised only
    assert np.array_equal(result.union_mask(), prediction.masks.any(0).numpy())


def _decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        return np.asarray(picture.convert("RGB"))


def test_overlay_pictures_are_scaled_and_keep_point_positions(seg_model) -> None:
    image = np.kron(shapes_image(), np.ones((10, 10, 1), np.uint8))  # 960 x 1280
    [prediction] = seg_model.predict([image], [QUESTION], 1)
    result = result_from_prediction(seg_model, prediction, image.shape[:2], prompt_mode="points_dtoc",
                                    served={"name": "n", "version": "1", "source": "s"},
                                    batch_size=1, with_heatmap=True)
    pictures = overlay_pictures(image, result, max_side=320)
    assert display_size(960, 1280, 320) == (240, 320)
    overlay, heatmap = (_decode_data_url(pictures[k]) for k in ("overlay", "heatmap"))
    assert overlay.shape == heatmap.shape == (240, 320, 3)
    assert not np.array_equal(overlay, heatmap)
    labels = np.array(result.point_labels[0])
    x, y = np.floor(np.array(result.points[0])[labels == 1][-1] / 4).astype(int)
    assert tuple(overlay[y, x]) == POSITIVE_COLOUR


# ---------------------------------------------------------------------------------------------
# The replica's logic, one batch at a time (no Ray; @serve.batch itself is exercised by the
# integration tests, it needs a Serve replica)


class MemorySource:
    """Versions held in memory; `pointer` plays the registry alias."""

    follows_alias = True

    def __init__(self, models: dict[str, object]) -> None:
        self.models = models
        self.pointer = "1"
        self.broken: set[str] = set()

    def resolve_version(self) -> str:
        return self.pointer

    def load(self, version: str) -> ServedModel:
        if version in self.broken:
            raise ModelSourceError(f"version {version} does not load")
        return ServedModel(self.models[version], "read-tiny", version, "models:/read-tiny@champion")


def instrumented(model) -> list[tuple[int, str]]:
    """Record (batch size, prompt mode) of each predict call; a question with "boom" raises."""
    calls: list[tuple[int, str]] = []
    original = model.predict

    def predict(images, questions, max_new_tokens):
        calls.append((len(questions), model.config.prompt_mode))
        if any("boom" in q for q in questions):
            raise RuntimeError("kernel exploded\nwith a second line")
        return original(images, questions, max_new_tokens)

    model.predict = predict
    return calls


def _server(source, **overrides) -> ReadModelServer:
    settings = load_job_config("configs/tiny.yaml", [
        "serve.alias_poll_s=0", "serve.max_new_tokens=1", "serve.batch_wait_timeout_s=0.2",
        *[f"serve.{k}={v}" for k, v in overrides.items()]]).serve
    return ReadModelServer(source, settings)


def _query(question: str, mode: str | None = None):
    from pipelines.serving.queries import SegmentQuery

    return SegmentQuery(shapes_image(), question, mode)


def test_a_failure_in_a_batch_stays_with_its_request() -> None:
    model, _ = seg_answering_model()
    calls = instrumented(model)
    server = _server(MemorySource({"1": model}))
    questions = ["where is a?", "where is b?", "boom now", "where is c?"]
    outcomes = server.answer_batch([_query(q) for q in questions])
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failures) == 1 and isinstance(outcomes[2], ModelFailure)
    assert "read-tiny v1 failed: RuntimeError: kernel exploded with a second line" in str(outcomes[2])
    assert all(o.answer == "[SEG]" for i, o in enumerate(outcomes) if i != 2)
    assert calls[0][0] == 4  # one batched call first, then one call per request
    assert sorted(size for size, _ in calls[1:]) == [1, 1, 1, 1]
    # The server keeps answering after the failure.
    [after] = server.answer_batch([_query("where is d?")])
    assert after.answer == "[SEG]" and after.batch_size == 1


def test_prompt_modes_in_one_batch_run_as_one_call_per_mode() -> None:
    model, _ = seg_answering_model()
    calls = instrumented(model)
    server = _server(MemorySource({"1": model}))
    queries = [_query("a?", "seg_only"), _query("b?"), _query("c?", "seg_only")]
    outcomes = server.answer_batch(queries)
    assert [o.prompt_mode for o in outcomes] == ["seg_only", "points_dtoc", "seg_only"]
    assert sorted(calls) == [(1, "points_dtoc"), (2, "seg_only")]
    assert [o.batch_size for o in outcomes] == [2, 1, 2]
    assert model.config.prompt_mode == "points_dtoc"  # restored after the call


def test_alias_moves_are_swapped_in_and_bad_versions_are_not(seg_model) -> None:
    other, _ = seg_answering_model(seed=1)
    source = MemorySource({"1": seg_model, "2": other.eval(), "3": seg_model})
    server = _server(source)
    assert server.refresh() is False and server.describe()["version"] == "1"
    source.pointer = "2"
    assert server.refresh() is True
    [answer] = server.answer_batch([_query("where?")])
    assert answer.model["version"] == "2" and server.describe()["swaps"] == 1
    source.pointer, source.broken = "3", {"3"}
    assert server.refresh() is False  # a version that does not load: keep serving 2
    status = server.describe()
    assert status["version"] == "2" and "version 3 does not load" in status["last_error"]
    source.broken = set()
    assert server.refresh() is True and server.describe()["last_error"] is None


class Unplaceable(torch.nn.Module):
    """A loaded model that cannot be moved to the replica's device (e.g. out of memory)."""

    def to(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 14.00 GiB")


def test_a_version_that_cannot_be_placed(seg_model) -> None:
    source = MemorySource({"1": seg_model, "2": Unplaceable()})
    server = _server(source)
    source.pointer = "2"
    # On the CPU the old version stays in place and keeps answering.
    assert server.refresh() is False and "out of memory" in server.describe()["last_error"]
    server.check_health()
    assert server.answer_batch([_query("where?")])[0].model["version"] == "1"
    # On an accelerator the old version left the device first: the replica asks to be replaced.
    server._device = torch.device("meta")
    assert server.refresh() is False
    with pytest.raises(RuntimeError, match="version 2 could not be placed on meta"):
        server.check_health()
    [failure] = server.answer_batch([_query("where?")])
    assert isinstance(failure, ModelFailure) and "no model loaded" in str(failure)


# ---------------------------------------------------------------------------------------------
# Configuration and deployment sizing


def test_presets_size_replicas_cpu_for_tiny_gpu_for_large() -> None:
    tiny = load_job_config("configs/tiny.yaml")
    options = model_deployment_options(tiny.serve)
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    for preset in ("read-7b", "read-13b"):
        job = load_job_config(f"configs/{preset}.yaml")
        options = model_deployment_options(job.serve)
        assert options["ray_actor_options"]["num_gpus"] == 1
        scaling = options["autoscaling_config"]
        assert 1 <= scaling["min_replicas"] < scaling["max_replicas"]
        assert scaling["target_ongoing_requests"] == job.serve.max_batch_size
        assert options["max_ongoing_requests"] >= 2 * job.serve.max_batch_size
        assert ingress_deployment_options(job.serve)["ray_actor_options"]["num_cpus"] > 0
        assert model_reference(job) == f"models:/{preset}@champion"


@pytest.mark.parametrize("override,words", [
    ("serve.min_replicas=0", "serve.min_replicas=0 must be in [1, serve.max_replicas=1]"),
    ("serve.max_batch_size=0", "serve.max_batch_size=0 must be >= 1"),
    ("serve.num_gpus_per_replica=-1", "serve.num_gpus_per_replica=-1.0 must be >= 0"),
    ("serve.model=read-tiny@champion", "must be models:/<name>@<alias>"),
    ("serve.max_batchsize=4", "serve.max_batchsize"),
])
def test_bad_serve_settings_are_config_errors(override: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_job_config("configs/tiny.yaml", [override])
    assert words in str(caught.value)


def test_registry_references() -> None:
    assert RegistryReference.parse("models:/read-7b@champion") == RegistryReference("read-7b", "champion")
    pinned = RegistryReference.parse("models:/read-7b/12")
    assert pinned.version == "12" and pinned.uri == "models:/read-7b/12"
    for bad in ("models:/read-7b", "runs:/abc/model", "models:/a@b/3"):
        with pytest.raises(ModelSourceError, match="not a registry reference"):
            RegistryReference.parse(bad)


def test_app_builder_checks_its_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="no MLflow tracking URI for the served model"):
        app_builder({"config": "configs/tiny.yaml"})
    with pytest.raises(ConfigError, match="unknown application arg"):
        app_builder({"config": "configs/tiny.yaml", "replicas": 3})
    with pytest.raises(ConfigError, match="need `config`"):
        app_builder({})
    with pytest.raises(ConfigError, match=r"serve\.nope"):
        app_builder({"config": "configs/tiny.yaml", "overrides": ["serve.nope=1"],
                     "tracking_uri": "sqlite:///unused.db"})
