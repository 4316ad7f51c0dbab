"""Question and answer templates for segmentation conversations.

The lists follow the structure of the upstream READ/SESAME template families
(`READ:dataloaders/qa_template.py`):
every question starts with ``"<image>\\n"``; long questions embed the full query as ``{sent}``;
short questions name the object as ``{class_name}``; every answer that asks for a mask carries
exactly one ``[SEG]``; correction answers name both the absent ``{class_name}`` and the present
``{gt_name}``. The wording is this project's own. LISA's fixed validation templates are reproduced
verbatim because the published validation numbers depend on them.
"""

from __future__ import annotations

IMAGE_PLACEHOLDER = "<image>"
SEG_PLACEHOLDER = "[SEG]"

SHORT_QUESTION_TEMPLATES: tuple[str, ...] = (
    "<image>\nCan you segment the {class_name} in this image?",
    "<image>\nPlease segment {class_name} in this picture.",
    "<image>\nWhere is the {class_name}? Please output a segmentation mask.",
    "<image>\nWhat is {class_name} in this image? Please respond with a segmentation mask.",
    "<image>\nIs there {class_name} in this image? If so, give its segmentation mask.",
    "<image>\nCould you mark {class_name} in the image with a mask?",
    "<image>\nFind {class_name} in this image and segment it.",
    "<image>\nShow me where {class_name} is with a segmentation mask.",
    "<image>\nPlease locate {class_name} and output its mask. If it is not there, say so.",
    "<image>\nCan you check whether {class_name} appears here and, if it does, segment it?",
    "<image>\nHighlight {class_name} in this image.",
    "<image>\nI am looking for {class_name}. Can you segment it for me?",
    "<image>\nGive me the segmentation of {class_name} in this image.",
    "<image>\nPlease produce a mask for {class_name}, or tell me if it is missing.",
    "<image>\nWhich region shows {class_name}? Output the segmentation mask.",
    "<image>\nSegment {class_name}, please.",
)

LONG_QUESTION_TEMPLATES: tuple[str, ...] = (
    "<image>\n{sent} Please output segmentation mask.",
    "<image>\n{sent} Please respond with a segmentation mask.",
    "<image>\n{sent} Can you segment it in this image?",
    "<image>\n{sent} Please give the answer as a segmentation mask.",
    "<image>\n{sent} Could you mark the region with a mask if it is present?",
    "<image>\n{sent} Segment the answer in the image.",
    "<image>\n{sent} Show the answer with a segmentation mask.",
    "<image>\n{sent} Please locate it and output its mask.",
    "<image>\n{sent} If it exists in this image, please segment it.",
    "<image>\n{sent} Answer with a mask of the relevant region.",
    "<image>\n{sent} Highlight the answer in the picture.",
    "<image>\n{sent} Provide the segmentation of the object that answers this.",
)

SHORT_ANSWER_TEMPLATES: tuple[str, ...] = (
    "Sure, it is [SEG].",
    "Sure, the {class_name} is [SEG].",
    "Yes, {class_name} is here: [SEG].",
    "Here is the {class_name}: [SEG].",
    "The {class_name} is segmented as [SEG].",
    "[SEG].",
    "I found {class_name}: [SEG].",
    "Yes, the segmentation of {class_name} is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "It is [SEG].",
    "Found it: [SEG].",
    "The mask of {class_name} is [SEG].",
    "{class_name} is shown in [SEG].",
    "Yes, here it is: [SEG].",
)

LONG_ANSWER_TEMPLATES: tuple[str, ...] = (
    "Sure, it is [SEG].",
    "Sure, [SEG].",
    "Sure, the segmentation result is [SEG].",
    "It is [SEG].",
    "[SEG].",
    "Here is the segmentation: [SEG].",
    "The answer is [SEG].",
    "Confirmed, the region is [SEG].",
    "I found it: [SEG].",
    "The relevant region is [SEG].",
    "Sure, here is the mask: [SEG].",
    "This is the segmentation you asked for: [SEG].",
)

NEG_ANSWER_TEMPLATES: tuple[str, ...] = (
    "Sorry, {class_name} is not in this image.",
    "I cannot find {class_name} in this image.",
    "There is no {class_name} here.",
    "Sorry, but it is not in this image.",
    "The image does not contain {class_name}.",
    "No, {class_name} does not appear in this image.",
    "I checked, and {class_name} is not present.",
    "Sorry, I do not see it in this picture.",
    "{class_name} is not visible in this image.",
    "There is nothing like {class_name} in this image.",
    "No such object is in this image.",
    "I am afraid {class_name} is missing from this image.",
)

CORRECT_ANSWER_TEMPLATES: tuple[str, ...] = (
    "While the {class_name} is not present, the image does include {gt_name}.",
    "There is no {class_name}, but there is {gt_name}.",
    "I cannot find {class_name}; perhaps you mean {gt_name}.",
    "Sorry, {class_name} is not in this image. I do see {gt_name}.",
    "The image has no {class_name}, although it does show {gt_name}.",
    "{class_name} is not here, but {gt_name} is.",
    "No {class_name} appears in this image; {gt_name} might be what you are looking for.",
    "I do not see {class_name}. The closest match is {gt_name}.",
    "There is {gt_name} in the image, not {class_name}.",
    "Instead of {class_name}, the image contains {gt_name}.",
    "The {class_name} is absent, but {gt_name} is present.",
    "Maybe you mean {gt_name}? There is no {class_name} here.",
)

# LISA's fixed validation templates (`READ:dataloaders/test_dataset.py`), verbatim: ReasonSeg
# val/test numbers use them.
FIXED_SHORT_QUESTION = (
    "<image>\nWhat is {class_name} in this image? Please output segmentation mask."
)
FIXED_LONG_QUESTION = "<image>\n{sent} Please output segmentation mask."
FIXED_ANSWER = "Sure, the segmentation result is [SEG]."

# Templates whose answer asks the model for a mask (exactly one [SEG] each).
SEG_ANSWER_FAMILIES: dict[str, tuple[str, ...]] = {
    "short_answer": SHORT_ANSWER_TEMPLATES,
    "long_answer": LONG_ANSWER_TEMPLATES,
    "fixed_answer": (FIXED_ANSWER,),
}
QUESTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "short_question": SHORT_QUESTION_TEMPLATES,
    "long_question": LONG_QUESTION_TEMPLATES,
    "fixed_short_question": (FIXED_SHORT_QUESTION,),
    "fixed_long_question": (FIXED_LONG_QUESTION,),
}
NO_SEG_ANSWER_FAMILIES: dict[str, tuple[str, ...]] = {
    "neg_answer": NEG_ANSWER_TEMPLATES,
    "correct_answer": CORRECT_ANSWER_TEMPLATES,
}


def all_templates() -> list[str]:
    """Every template string, for building the tiny tokenizer's corpus."""
    families = {**QUESTION_FAMILIES, **SEG_ANSWER_FAMILIES, **NO_SEG_ANSWER_FAMILIES}
    return [template for family in families.values() for template in family]
