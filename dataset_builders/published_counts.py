"""Published split sizes of the benchmarks, and a one-line comparison with what a build kept.

A build that keeps fewer images than a benchmark has lost records (or reads another version of
the data); one that keeps more reads something else. Either way the numbers it reports are not
comparable with the paper's, so every build prints its counts next to these
(docs/fidelity.md, "Records"). Sources:

* ReasonSeg: `LISA:README.md` "Dataset": 1218 images, 239 train / 200 val / 779 test.
* RefCOCO (unc), RefCOCO+ (unc), RefCOCOg (umd): the REFER papers' split sizes as commonly
  published (images and expressions per evaluation split). Upstream reads SESAME's
  ``*_exclude_unified`` pickles, which change the *train* splits, so no train count is listed;
  docs/fidelity.md tabulates all of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedCount:
    images: int | None = None
    expressions: int | None = None  # referring expressions (REFER sentences)
    source: str = ""


LISA = "LISA README"
REFER_PAPERS = "REFER split statistics"
PUBLISHED: dict[tuple[str, str], PublishedCount] = {
    ("reason_seg", "train"): PublishedCount(images=239, source=LISA),
    ("reason_seg", "val"): PublishedCount(images=200, source=LISA),
    ("reason_seg", "test"): PublishedCount(images=779, source=LISA),
    ("refcoco", "val"): PublishedCount(1500, 10834, REFER_PAPERS),
    ("refcoco", "testA"): PublishedCount(750, 5657, REFER_PAPERS),
    ("refcoco", "testB"): PublishedCount(750, 5095, REFER_PAPERS),
    ("refcoco+", "val"): PublishedCount(1500, 10758, REFER_PAPERS),
    ("refcoco+", "testA"): PublishedCount(750, 5726, REFER_PAPERS),
    ("refcoco+", "testB"): PublishedCount(750, 4889, REFER_PAPERS),
    ("refcocog", "val"): PublishedCount(1300, 4896, REFER_PAPERS),
    ("refcocog", "test"): PublishedCount(2600, 9602, REFER_PAPERS),
}


def published_comparison(dataset: str, split: str, images: int, expressions: int) -> str:
    """One line: the kept counts next to the published ones, differences flagged."""
    known = PUBLISHED.get((dataset, split))
    if known is None:
        return f"{dataset}/{split}: {images} images, {expressions} queries (no published count)"
    parts, differs = [], False
    for what, kept, published in (("images", images, known.images),
                                  ("expressions", expressions, known.expressions)):
        if published is None:
            continue
        if kept == published:
            parts.append(f"{kept} {what} (published {published})")
        else:
            differs = True
            parts.append(f"{kept} {what} (published {published}, {kept - published:+d})")
    flag = "DIFFERS from the published split" if differs else "matches the published split"
    return f"{dataset}/{split}: {', '.join(parts)}: {flag} [{known.source}]"
