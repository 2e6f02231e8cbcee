"""The texts that text-scoring arms need per task: CLIP class prompts, and the question and answers of the
answer-scoring LLM arms (LaVIN, BLIP-2). The binary task keeps the paper's texts; a staged task gets one prompt
(and one answer) per stage, a multi-label task one per finding. The configs take them through resolvers
(``${task_prompts:...}``, ``${task_answers:...}``, ``${task_question:...}``), so ``data.task`` alone sets them;
override ``model.<size>.class_names`` (or ``prompts``, ``answers``, ``question``) for other wording.
"""

from __future__ import annotations

from collections.abc import Sequence

from pneumollm.data.targets import BINARY, MULTICLASS, LabelTask

PAPER_PROMPTS = ("Normal chest radiograph", "Pneumoconiosis chest radiograph")
PAPER_QUESTION = "Does the patient have pneumoconiosis?"
PAPER_ANSWERS = ("No", "Yes")  # index 1 = "Yes" = pneumoconiosis
STAGE_QUESTION = "Which pneumoconiosis category?"  # in the tiny vocabulary too
FINDINGS_QUESTION = "Which findings does the radiograph show?"


def _finding(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def class_prompts(task: str, classes: Sequence[object] | None, label_columns: Sequence[object] | None) -> list[str]:
    """One CLIP prompt per model output: the paper's two, "Stage <k> pneumoconiosis chest radiograph" per stage
    (the first stage "Normal chest radiograph"), or "<Finding> chest radiograph" per finding."""
    spec = LabelTask.from_config(task, classes, label_columns)
    if spec.task == BINARY:
        return list(PAPER_PROMPTS)
    if spec.task == MULTICLASS:
        return [PAPER_PROMPTS[0]] + [f"Stage {name} pneumoconiosis chest radiograph" for name in spec.classes[1:]]
    return [f"{_finding(name)} chest radiograph" for name in spec.label_columns]


def answers(task: str, classes: Sequence[object] | None, label_columns: Sequence[object] | None) -> list[str]:
    """One answer per model output: No/Yes, the stage names, or the finding names."""
    spec = LabelTask.from_config(task, classes, label_columns)
    if spec.task == BINARY:
        return list(PAPER_ANSWERS)
    return [str(name) for name in spec.output_names]


def question(task: str) -> str:
    """The question the answer-scoring arms ask."""
    return {BINARY: PAPER_QUESTION, MULTICLASS: STAGE_QUESTION}.get(str(task), FINDINGS_QUESTION)
