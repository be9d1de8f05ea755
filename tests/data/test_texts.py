import pytest

from llmfeat.core.errors import ConfigError
from llmfeat.data.texts import history_text, render, template_fields

T = "{title}. {category}. {description}"


def test_render_all_fields():
    assert (
        render(T, {"title": "Toy Story", "category": "Animation", "description": "Toys."})
        == "Toy Story. Animation. Toys."
    )


def test_missing_fields_leave_no_litter():
    assert render(T, {"title": "Toy Story", "category": None, "description": "Toys."}) == "Toy Story. Toys."
    assert render(T, {"title": "Toy Story", "category": "", "description": float("nan")}) == "Toy Story"
    assert render(T, {"title": None, "category": None, "description": None}) == ""


def test_first_field_drops_separators_but_keeps_words():
    u = "Age {age}, gender {gender}, {occupation}. Recently liked: {history}"
    assert (
        render(u, {"age": 24, "gender": "M", "occupation": "writer", "history": ""})
        == "Age 24, gender M, writer"
    )
    assert render(u, {"age": None, "gender": "F", "occupation": None, "history": "Heat (1995)"}) == (
        "gender F. Recently liked: Heat (1995)"
    )
    assert (
        render(u, {"age": None, "gender": None, "occupation": None, "history": "Heat (1995)"})
        == "Recently liked: Heat (1995)"
    )


def test_lists_and_numbers():
    assert render("{title} [{tags}]", {"title": "x", "tags": ["a", "", "b"]}) == "x [a, b]"
    assert render("{age}", {"age": 24.0}) == "24"


def test_template_errors():
    assert template_fields(T) == ["title", "category", "description"]
    with pytest.raises(ConfigError, match="not a column"):
        render("{nope}", {"title": "x"})
    with pytest.raises(ValueError, match="format specs"):
        render("{title:>10}", {"title": "x"})


def test_history_text_newest_first_as_given():
    assert history_text(["B", "", "A"]) == "B; A"
