"""Per-family prompt templates and the `prompt_template` override."""
from __future__ import annotations

import pytest

from distill.errors import UserError
from distill.teachers.families import FAMILIES, PLACEHOLDERS, check_template, family_for

ROW = {"question": "what color is it", "region_text": "the red circle", "premise": "", "hypothesis": "a red shape"}


def test_family_templates_fill_from_the_row():
    flo, pali = FAMILIES["florence2"], FAMILIES["paligemma"]
    assert flo.prompt("caption", ROW, None) == "<CAPTION>"
    assert flo.prompt("grounding", ROW, None) == "<CAPTION_TO_PHRASE_GROUNDING>the red circle"
    assert pali.prompt("vqa", ROW, None) == "answer en what color is it"
    assert pali.prompt("grounding", ROW, None) == "detect the red circle"


def test_empty_premise_uses_the_no_premise_variant():
    pali = FAMILIES["paligemma"]
    assert "given" not in pali.prompt("entailment", ROW, None)
    with_premise = pali.prompt("entailment", dict(ROW, premise="two shapes"), None)
    assert '"two shapes"' in with_premise and '"a red shape"' in with_premise


def test_override_and_unknown_task_fall_back():
    fam = family_for("git", has_chat_template=False)
    assert fam.prompt("vqa", ROW, "Q: {question} A:") == "Q: what color is it A:"
    assert fam.prompt("newtask", ROW, None, task_prompt=" the task's own prompt") == "the task's own prompt"
    assert family_for("smolvlm", has_chat_template=True).chat


@pytest.mark.parametrize("template", ["{answer}", "{}", "{question"])
def test_bad_templates_are_refused_naming_the_field(template):
    with pytest.raises(UserError, match="prompt_template"):
        check_template(template)


def test_every_documented_placeholder_is_accepted():
    check_template(" ".join("{" + p + "}" for p in PLACEHOLDERS))
