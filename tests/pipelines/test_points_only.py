"""Points-only analysis in both named forms, on planted inputs.

`points_only_tuned` prompts READ's fine-tuned decoder with the SasP points alone;
`points_only_base_sam` is upstream's only code for the analysis: segment-anything's
`SamPredictor` on the base SAM weights, ``multimask_output=True``, the highest-scoring mask.
The reference for the latter is that very call, made per query as upstream made it.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor

from dataset_builders.sample import Query, Sample, Target
from pipelines.evaluation.query_scoring import QueryScorer, ScoringOptions
from pipelines.evaluation.scoring import score_results
from read_model.analysis import BaseSamPointsOnly
from read_model.metrics import intersection_union
from read_model.sam import build_sam

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tuned_and_base(tmp_path_factory: pytest.TempPathFactory):
    """A tiny READ whose decoder was "fine-tuned" (perturbed) after its base SAM was saved."""
    from pipelines.config import load_job_config
    from read_model.model import build_model

    model = build_model(load_job_config(REPO / "configs" / "tiny.yaml").model)[0].eval()
    base_path = tmp_path_factory.mktemp("sam") / "base_sam.pth"
    torch.save(model.sam.state_dict(), base_path)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for param in model.sam.mask_decoder.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    return model, base_path


def _image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    image[10:34, 16:44] = (220, 40, 40)
    return image


def test_base_sam_form_is_upstreams_predictor_call(tuned_and_base) -> None:
    model, base_path = tuned_and_base
    image = _image()
    rng = np.random.default_rng(1)
    points = torch.tensor(rng.uniform(0, [63, 47], size=(3, 5, 2)), dtype=torch.float32)
    labels = torch.tensor([[1, 1, 0, -1, 0], [1, 0, 0, 0, -1], [0, 1, -1, -1, 1]])
    analysis = BaseSamPointsOnly.from_checkpoint(model.config.sam, base_path)
    got = analysis.masks(image, points, labels)
    assert got.shape == (3, 48, 64) and got.dtype == torch.bool

    base = build_sam(dataclasses.replace(model.config.sam, checkpoint=str(base_path))).float()
    predictor = SamPredictor(base.eval())
    predictor.set_image(image)
    for row in range(3):  # upstream: per query, multimask, masks[np.argmax(scores)]
        masks, scores, _ = predictor.predict(point_coords=points[row].numpy(),
                                             point_labels=labels[row].numpy(),
                                             multimask_output=True)
        assert masks.shape[0] == 3
        assert len({m.tobytes() for m in masks}) > 1  # choosing among them matters
        np.testing.assert_array_equal(got[row].numpy(), masks[int(np.argmax(scores))])
    assert analysis.masks(image, points[:0], labels[:0]).shape == (0, 48, 64)

    # The base weights, not READ's fine-tuned decoder: the tuned SAM answers differently.
    tuned = SamPredictor(model.sam.float().eval())
    tuned.set_image(image)
    masks, scores, _ = tuned.predict(point_coords=points[0].numpy(),
                                     point_labels=labels[0].numpy(), multimask_output=True)
    assert not np.array_equal(masks[int(np.argmax(scores))], got[0].numpy())


def _sample() -> Sample:
    image = _image(seed=2)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:34, 16:44] = 1
    queries = [Query("red box", False), Query("blue dog", False, exists=False,
                                              gt_sent="red box")]
    return Sample("fprefcoco_val_p", "fprefcoco", "val", buffer.getvalue(), 64, 48,
                  [Target(mask, queries, "t")])


def test_scorer_reports_both_forms_under_their_names(tuned_and_base) -> None:
    model, base_path = tuned_and_base
    sample = _sample()
    options = ScoringOptions(modes=("segmentation", "points_only", "points_only_base_sam"),
                             base_sam_checkpoint=str(base_path))
    assert options.modes == ("segmentation", "points_only_tuned", "points_only_base_sam")
    results = QueryScorer(model, options).score([sample])
    analysis = BaseSamPointsOnly.from_checkpoint(model.config.sam, base_path)
    for result in results:
        gt = torch.from_numpy(sample.targets[0].mask if result.gt_exists
                              else np.zeros((48, 64), np.uint8))
        # The base form is prompted with the query's own SasP points and labels (the payload).
        points = torch.tensor([result.payload["points"]], dtype=torch.float32)
        labels = torch.tensor([result.payload["labels"]])
        base = analysis.masks(_image(seed=2), points, labels)
        i, u = intersection_union(base, gt[None])
        assert (result.points_only_base_sam_intersection, result.points_only_base_sam_union) == (
            int(i[0]), int(u[0]))
        assert result.points_only_tuned_union >= 0  # counted (its value: test_eval_scoring)
    metrics = score_results(results)[0].metrics
    assert {"points_only_tuned_giou", "points_only_base_sam_giou"} <= set(metrics)


def test_base_sam_form_needs_base_weights(tuned_and_base) -> None:
    model, _ = tuned_and_base
    with pytest.raises(ValueError, match="off-the-shelf SAM weights"):
        QueryScorer(model, ScoringOptions(modes=("points_only_base_sam",)))
