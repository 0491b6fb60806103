"""rotation.untrusted: bounded JSON in, escaped text out."""

from __future__ import annotations

import json

import pytest

from rotation.untrusted import JsonRefused, array_items, bounded_value, json_depth, loads_bounded, printable


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('"[[[[["', 0),  # brackets inside a string are text
        ('["\\"]]]", [[]]]', 3),  # an escaped quote does not end the string
        ("[" * 20_000 + "]" * 20_000, 20_000),
        ("", 0),
    ],
)
def test_depth_is_measured_without_recursion(text, depth):
    """Nesting is counted by a scan, strings skipped, at any depth."""
    assert json_depth(text.encode()) == depth


def test_too_deep_or_too_large_documents_are_refused_with_one_line():
    """A document past either bound is a JsonRefused (a ValueError) naming what and by how much."""
    with pytest.raises(JsonRefused, match=r"^body is nested 65 deep; the limit is 64$"):
        loads_bounded("[" * 65 + "]" * 65, what="body")
    with pytest.raises(JsonRefused, match=r"^body is 11 bytes; the limit is 10$"):
        loads_bounded(b'{"a": "bb"}', what="body", max_bytes=10)
    with pytest.raises(JsonRefused, match="not UTF-8"):
        loads_bounded(b'"\xff"', what="body")
    assert loads_bounded("[" * 64 + "]" * 64, what="body") is not None


def test_array_items_split_only_at_the_top_level():
    """Each element of a top-level array is cut out whole, commas in strings and nested values kept."""
    doc = '[{"a": "x,]"}, [1, [2, 3]], "s,t" , 4]'
    items = array_items(doc.encode())
    assert items is not None
    assert [json.loads(i) for i in items] == [{"a": "x,]"}, [1, [2, 3]], "s,t", 4]
    assert array_items(b'{"a": 1}') is None
    assert array_items(b"[]") == []


def test_already_parsed_values_are_bounded_too():
    """A value someone else parsed is checked for depth without recursion."""
    nested: object = {}
    for _ in range(100):
        nested = {"x": [nested]}
    with pytest.raises(JsonRefused, match="nested more than 64 deep"):
        bounded_value(nested, what="event")
    bounded_value({"data": {"Id": "https://kv.vault.azure.net/keys/k/v"}}, what="event")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode and\ttabs", "plain text, ünïcode and\ttabs"),
        ("\x1b[2K\rrotated", "\\x1b[2K\\x0drotated"),
        ("bell\x07 and nul\x00", "bell\\x07 and nul\\x00"),
        ("a\u202eb", "a\\u202eb"),  # right-to-left override: reorders what the terminal shows
        ("line\nforged", "line\\x0aforged"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text, shown):
    """Control, format and separator characters are escaped; printable text is left alone."""
    assert printable(text) == shown
