"""The --where filter language: what parses, what is refused (and how the error reads), evaluation against hand
results with missing values, and the Milvus expression it becomes."""

import numpy as np
import pytest

from deepmetric.errors import ConfigError
from deepmetric.retrieval.filters import parse

FIELDS = ["id", "label", "category", "price", "colour", "sale"]
ROWS = [
    {"id": "a", "label": 1, "category": "shoes", "price": 30, "colour": "red", "sale": True},
    {"id": "b", "label": 2, "category": "shoes", "price": 80.5, "colour": None, "sale": False},
    {"id": "c", "label": 1, "category": "hats", "price": 10, "colour": "blue", "sale": None},
    {"id": "d", "label": "x", "category": "bags", "price": None, "colour": "red", "sale": True},
]


def matching(text: str) -> list[str]:
    mask = parse(text, FIELDS).mask(lambda f: [r.get(f) for r in ROWS], len(ROWS))
    assert mask.dtype == bool and mask.shape == (len(ROWS),)
    return [r["id"] for r, m in zip(ROWS, mask.tolist(), strict=True) if m]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("category == 'shoes'", ["a", "b"]),
        ('category == "shoes"', ["a", "b"]),
        ("'shoes' == category", ["a", "b"]),
        ("category != 'shoes'", ["c", "d"]),
        ("price < 50", ["a", "c"]),
        ("50 < price", ["b"]),
        ("price >= 30 and price <= 80.5", ["a", "b"]),
        ("price > -1", ["a", "b", "c"]),
        ("category in ['hats', 'bags']", ["c", "d"]),
        ("category not in ['hats', 'bags']", ["a", "b"]),
        ("category in []", []),
        ("label == 1", ["a", "c"]),
        ("label in [2, 'x']", ["b", "d"]),
        ("label > 1", ["b"]),  # 'x' is not ordered against a number
        ("id == 'c' or id == 'd'", ["c", "d"]),
        ("sale == True", ["a", "d"]),
        ("(category == 'shoes' or category == 'hats') and price < 20", ["c"]),
        ("not (category == 'shoes')", ["c", "d"]),
        # missing values: unknown, never a match (SQL / Milvus three-valued logic)
        ("colour == 'red'", ["a", "d"]),
        ("colour != 'red'", ["c"]),
        ("not (colour == 'red')", ["c"]),
        ("colour not in ['red']", ["c"]),
        ("colour != 'red' or price > 50", ["b", "c"]),
        ("sale != True", ["b"]),
    ],
)
def test_evaluation_matches_hand_results(text, expected):
    assert matching(text) == expected


def test_missing_values_with_not_and():
    # d has no price, but colour == 'blue' is false → the and is false → not: true
    # b has no colour and its price > 50 is true → the and is unknown → not: unknown → no match
    assert matching("not (colour == 'blue' and price > 50)") == ["a", "c", "d"]
    # d: colour == 'red' true, price unknown → unknown → no match
    assert matching("not (colour == 'red' and price > 50)") == ["a", "c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("category ==", r"does not parse: .* at column \d+"),
        ("category = 'shoes'", "does not parse"),
        ("weight < 3", r"unknown field 'weight' at column 1; the known fields are category, colour, id, label, price"),
        ("category == 'a' and brand == 'b'", r"unknown field 'brand' at column 21"),
        ("len(category) > 2", "a function call at column 1"),
        ("__import__('os').system('true')", "a function call"),
        ("category.lower() == 'x'", "a function call|an attribute"),
        ("price + 1 > 2", "arithmetic"),
        ("1 < price < 5", "a chained comparison"),
        ("price == colour", "a comparison of two fields"),
        ("1 == 1", "a comparison without a field"),
        ("price", "a bare field 'price'"),
        ("'shoes'", "a bare literal"),
        ("category in ('a', 'b')", r"a \[list\] after `in`"),
        ("category is None", "is / is not"),
        ("price == None", "None at column 10"),
        ("category == f'x'", "an f-string"),
        ("price > 1e999", "non-finite"),
        ("price in [colour]", "the field 'colour' where a literal belongs"),
        ("", "give a filter"),
    ],
)
def test_rejected_filters_name_the_problem(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse(text, FIELDS)
    assert "where" in str(info.value)
    if text:
        assert repr(text) in str(info.value) or repr(text.strip()) in str(info.value)


def test_milvus_translation():
    f = parse("category == 'sh\"oes' and not (price >= 50 or colour in ['red', 'é']) and sale == True", FIELDS)
    assert f.fields == {"category", "price", "colour", "sale"}
    expr = f.milvus(lambda name: f"m_{name}")
    assert expr == ('((m_category == "sh\\"oes") and (not ((m_price >= 50) or (m_colour in ["red", "é"]))) and '
                    "(m_sale == true))")  # fmt: skip
    flipped = parse("50 < price and label not in [1, 'x']", FIELDS).milvus(
        str, lambda f, v: v * 2 if f == "price" else v
    )
    assert flipped == '((price > 100) and (label not in [1, "x"]))'


def test_matches_one_item():
    f = parse("category == 'shoes' and price < 50", FIELDS)
    assert f.matches(ROWS[0]) and not f.matches(ROWS[1]) and not f.matches({})
    assert isinstance(f.mask(lambda name: [None] * 3, 3), np.ndarray)
