"""Per-family prompt templates and the `prompt_template` override."""
from __future__ import annotations

import pytest

from distill.errors import UserError
from distill.tasks import get_task
from distill.teachers.families import FAMILIES, check_template, family_for, placeholders

ROW = {"question": "what color is it", "region_text": "the red circle", "premise": "", "hypothesis": "a red shape"}


def test_family_templates_fill_from_the_row():
    flo, pali = FAMILIES["florence2"], FAMILIES["paligemma"]
    assert flo.prompt(get_task("caption"), ROW, None) == "<CAPTION>"
    assert flo.prompt(get_task("grounding"), ROW, None) == "<CAPTION_TO_PHRASE_GROUNDING>the red circle"
    assert pali.prompt(get_task("vqa"), ROW, None) == "answer en what color is it"
    assert pali.prompt(get_task("grounding"), ROW, None) == "detect the red circle"


def test_empty_premise_uses_the_no_premise_variant():
    pali = FAMILIES["paligemma"]
    assert "given" not in pali.prompt(get_task("entailment"), ROW, None)
    with_premise = pali.prompt(get_task("entailment"), dict(ROW, premise="two shapes"), None)
    assert '"two shapes"' in with_premise and '"a red shape"' in with_premise


def test_override_and_unknown_task_fall_back():
    fam = family_for("git", has_chat_template=False)
    assert fam.prompt(get_task("vqa"), ROW, "Q: {question} A:") == "Q: what color is it A:"
    grounding = get_task("grounding")  # a task the family has no template for: the task's own prompt
    assert fam.prompt(grounding, ROW, None) == grounding.prompt(ROW).strip()
    assert family_for("smolvlm", has_chat_template=True).chat


@pytest.mark.parametrize("template", ["{answer}", "{}", "{question"])
def test_bad_templates_are_refused_naming_the_field(template):
    with pytest.raises(UserError, match="prompt_template"):
        check_template(template, placeholders(get_task("vqa")))


def test_placeholders_are_the_tasks_text_columns():
    for name in ("caption", "vqa", "grounding", "entailment"):
        task = get_task(name)
        check_template(" ".join("{" + p + "}" for p in placeholders(task)), placeholders(task))
    assert placeholders(get_task("entailment")) == ("prompt", "hypothesis", "premise")
    with pytest.raises(UserError, match="question"):
        check_template("{question}", placeholders(get_task("grounding")))
