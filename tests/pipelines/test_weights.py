"""Base weights: fetched into a store with a sha256 per file, copied once per node from there,
and checked from a worker before training starts.

Nothing can be downloaded from a model hub here, so the weights are the project's own: the tiny
preset's LLaVA saved in the llava-hf layout (config, safetensors, tokenizer) and its SAM saved as
a state-dict .pth, in a folder that stands in for the hub (`--source`, the same `fetch_weight`
function the hf:// and https:// sources go through after their download).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipelines.config import JobConfig, load_job_config
from pipelines.weights import (
    WeightsError,
    ensure_local,
    fetch,
    provision,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"
LLAVA = "tiny-llava-hf"
SAM = "tiny_sam.pth"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    """The tiny preset's base weights in the layouts of llava-hf and SAM releases."""
    from read_model.llava import build_llava
    from read_model.sam import build_sam
    from read_model.tokenizer import load_tokenizer, special_token_ids

    folder = tmp_path_factory.mktemp("hub-mirror")
    config = load_job_config(TINY).model
    tokenizer = load_tokenizer(config.tokenizer)
    ids = special_token_ids(tokenizer, config.tokenizer)
    llava = build_llava(config.llava, vocab_size=len(tokenizer), image_token_id=ids.image,
                        pad_token_id=ids.pad)
    llava.save_pretrained(folder / LLAVA)
    tokenizer.save_pretrained(folder / LLAVA)
    torch.save(build_sam(config.sam).state_dict(), folder / SAM)
    return folder


def job(cache: Path, store: str, *extra: str) -> JobConfig:
    """The tiny preset reading its base weights from node-local paths under `cache`."""
    stored = [f"weights.store={store}"] if store else []
    return load_job_config(TINY, [f"model.llava.path={cache / LLAVA}",
                                  f"model.sam.checkpoint={cache / SAM}",
                                  "model.tokenizer.build_tiny=false", *stored, *extra])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_then_copy_once_per_node_verifying_every_file(mirror, tmp_path):
    store = str(tmp_path / "store")
    config = job(tmp_path / "node-a", store)
    assert fetch(config.model, config.weights, source_root=str(mirror)) == {
        LLAVA: "fetched", SAM: "fetched"}
    manifest = read_manifest(store)
    for file in manifest[LLAVA].files:  # the checksums are those of the source files
        assert file.sha256 == sha256(mirror / LLAVA / file.path)
    assert manifest[SAM].files[0].sha256 == sha256(mirror / SAM)
    assert {f.path for f in manifest[LLAVA].files} >= {"config.json", "model.safetensors",
                                                      "tokenizer.json"}
    again = fetch(config.model, config.weights, source_root=str(mirror))
    assert again == {LLAVA: "up-to-date", SAM: "up-to-date"}

    first = provision(config.model, config.weights)
    assert [c.downloaded for c in first] == [True, True]
    assert sha256(tmp_path / "node-a" / SAM) == sha256(mirror / SAM)
    second = provision(config.model, config.weights)
    assert [c.downloaded for c in second] == [False, False]  # once per node

    # A damaged store is caught when a node copies from it, by file, and leaves nothing behind.
    stored = Path(store) / LLAVA / "model.safetensors"
    stored.write_bytes(b"\0" * stored.stat().st_size)
    fresh = tmp_path / "node-b"
    with pytest.raises(WeightsError, match=r"model\.safetensors: sha256 .* does not match"):
        ensure_local("model.llava.path", str(fresh / LLAVA), store)
    assert not (fresh / LLAVA).exists()


def test_missing_weights_are_named_by_key_and_node(mirror, tmp_path):
    config = job(tmp_path / "cache", "")
    with pytest.raises(WeightsError, match=r"model\.llava\.path=.*tiny-llava-hf: not found on node"):
        provision(config.model, config.weights)
    store = str(tmp_path / "store")
    fetch(config.model, config.weights, store=store, source_root=str(mirror))
    other = job(tmp_path / "cache", store, f"model.sam.checkpoint={tmp_path / 'cache/sam_vit_h.pth'}")
    with pytest.raises(WeightsError, match=r"has no weight 'sam_vit_h\.pth'; run `read-fetch-weights"):
        provision(other.model, other.weights)
    with pytest.raises(WeightsError, match=r"model\.llava\.path=.*: no source for 'tiny-llava-hf'; set weights\.sources\.tiny-llava-hf"):
        fetch(config.model, config.weights, store=store)


@pytest.mark.integration
def test_weights_on_s3_reach_every_worker_node_before_training(mirror, s3_server, ray_local,
                                                               tmp_path, capsys):
    from pipelines.cluster_capacity import training_request
    from pipelines.cluster_checks import ClusterCheckError, check_cluster
    from pipelines.fetch_weights import cli
    from read_model.model import build_model

    store = s3_server.url(f"weights-{tmp_path.name}")
    cache = tmp_path / "models"
    argv = ["--config", str(TINY), "--source", str(mirror), f"model.llava.path={cache / LLAVA}",
            f"model.sam.checkpoint={cache / SAM}", "model.tokenizer.build_tiny=false",
            f"weights.store={store}"]
    assert cli(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["weights"][LLAVA] == "fetched"
    assert cli(argv) == 0
    assert "up-to-date" in capsys.readouterr().out
    manifest = read_manifest(store)
    assert set(manifest) == {LLAVA, SAM}

    config = job(cache, store)
    found = check_cluster(config, training_request(config), weights=True)
    copies = {c["key"]: c for c in found["weights_on_nodes"]}
    assert found["capacity"] == "fits"
    assert copies["model.llava.path"]["downloaded"] and copies["model.sam.checkpoint"]["downloaded"]
    assert copies["model.llava.path"]["bytes"] == manifest[LLAVA].total_bytes
    again = check_cluster(config, training_request(config), weights=True)
    assert not any(c["downloaded"] for c in again["weights_on_nodes"])

    # What the worker copied is what the trainer loads: the mirror's weights, bit for bit.
    from safetensors.torch import load_file

    model, _ = build_model(config.model)
    saved = load_file(str(mirror / LLAVA / "model.safetensors"))
    name = next(k for k in saved if k.endswith("patch_embedding.weight"))
    loaded = next(p for n, p in model.llava.named_parameters()
                  if n.endswith(name.split("model.", 1)[-1]))
    assert torch.equal(loaded.detach(), saved[name])
    assert (cache / f".{LLAVA}.read-weights.json").is_file()  # the next start reuses the copy

    # A weight the store lacks is refused from the worker, before any training would start.
    missing = job(cache, store, f"model.sam.checkpoint={cache / 'sam_vit_h.pth'}")
    with pytest.raises(ClusterCheckError, match=r"has no weight 'sam_vit_h\.pth'"):
        check_cluster(missing, training_request(missing), weights=True)
