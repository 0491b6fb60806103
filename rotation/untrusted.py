"""Bounds on what comes in from outside (JSON) and on what goes out to a terminal (text).

Every JSON document the rotator reads is someone else's: an event, a queue message, an HTTP body, an ARM or
Key Vault answer, a replay file. Python's JSON parser recurses once per nesting level, so a small document
nested 20,000 deep raises `RecursionError` wherever it is parsed. `check_json` measures size and nesting
first, without recursion, and `loads_bounded` refuses a document past either bound with `JsonRefused`,
a `ValueError` with a one-line reason (callers already turn a `ValueError` into their usual rejection).

`printable` escapes characters a terminal would act on (escape sequences, carriage returns, other control
and format characters), so text from an answer (an ARM error message, a stored reason) cannot rewrite the
line an operator reads.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_JSON_DEPTH = 64  # far deeper than any Azure answer or event the rotator reads (about 8 at most)
MAX_JSON_BYTES = 4 * 1024 * 1024  # an ARM listing page or a replay file of a few thousand events fits

_QUOTE_LIMIT = 80  # characters of a quoted value in a reason: enough to recognise it, too few to flood
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_QUOTE = ord('"')
_BACKSLASH = ord("\\")
_COMMA = ord(",")


class JsonRefused(ValueError):
    """A JSON document is too large or nested too deeply to be read; the message says which."""


def _structure(data: bytes) -> Iterator[tuple[int, int]]:
    """``(index, byte)`` of every byte outside JSON strings (so brackets in strings are not counted)."""
    in_string = escaped = False
    for index, byte in enumerate(data):
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        else:
            yield index, byte


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in ``data`` (JSON text), counted without recursion.

    Malformed text is measured as far as it goes (the parser reports its own errors afterwards).
    """
    depth = deepest = 0
    for _, byte in _structure(data):
        if byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth = max(depth - 1, 0)
    return deepest


def array_items(data: bytes) -> list[bytes] | None:
    """The raw text of each element of a top-level JSON array, or None when ``data`` is not one.

    Lets a reader refuse one element nested too deeply and keep the others. Scanned without recursion;
    malformed text gives whatever spans it gives (each is parsed and refused on its own).
    """
    text = data.strip()
    if not text.startswith(b"["):
        return None
    items: list[bytes] = []
    depth = 0
    start = 1
    for index, byte in _structure(text):
        if byte in _OPEN:
            depth += 1
        elif byte in _CLOSE:
            depth -= 1
            if depth == 0:
                items.append(text[start:index])
                break
        elif byte == _COMMA and depth == 1:
            items.append(text[start:index])
            start = index + 1
    return [item for item in items if item.strip()]


def check_json(
    data: str | bytes, *, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> bytes:
    """``data`` as bytes when it is within both bounds; `JsonRefused` naming ``what`` otherwise."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonRefused(f"{what} is {len(raw)} bytes; the limit is {max_bytes}")
    # Fewer brackets in all than the limit cannot nest past it: most answers skip the byte-by-byte scan.
    brackets = raw.count(b"[") + raw.count(b"{")
    depth = json_depth(raw) if brackets > max_depth else 0
    if depth > max_depth:
        raise JsonRefused(f"{what} is nested {depth} deep; the limit is {max_depth}")
    return raw


def loads_bounded(
    data: str | bytes, *, what: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> Any:  # noqa: ANN401 - any JSON value
    """`json.loads` after `check_json`; `JsonRefused` or `json.JSONDecodeError` (both `ValueError`).

    Bytes must be UTF-8 (`json.loads` would otherwise guess UTF-16 or UTF-32 from leading NUL bytes).
    """
    raw = check_json(data, what=what, max_bytes=max_bytes, max_depth=max_depth)
    if isinstance(data, str):
        return json.loads(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonRefused(f"{what} is not UTF-8 text") from None
    return json.loads(text)


def bounded_value(value: object, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """`JsonRefused` when an already-parsed value nests deeper than ``max_depth`` (checked without recursion).

    For values someone else parsed (the Functions host's trigger objects).
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise JsonRefused(f"{what} is nested more than {max_depth} deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def printable(text: str) -> str:
    r"""``text`` with every non-printable character (ESC, CR, other controls, bidi marks) escaped.

    Tabs stay; everything else :meth:`str.isprintable` refuses is written as ``\xNN``, ``\uNNNN`` or
    ``\UNNNNNNNN``, and a backslash before such an escape cannot be told apart, which is fine for reading.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable() or ch == "\t":
            out.append(ch)
            continue
        code = ord(ch)
        if code <= 0xFF:  # noqa: PLR2004
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:  # noqa: PLR2004
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def quote(value: str) -> str:
    """Return ``value`` truncated to a bounded length and ``repr()``-ed, safe in a log line or a reason."""
    text = repr(value[: _QUOTE_LIMIT + 1])
    if len(text) > _QUOTE_LIMIT + 2:  # cut the escaped form: escapes can make it several times longer
        text = text[: _QUOTE_LIMIT - 4] + "..." + text[0]
    return text


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type (``object``, ``array``...), for rejection reasons."""
    names: tuple[tuple[type, str], ...] = (
        (bool, "boolean"),
        (int, "number"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
        (dict, "object"),
    )
    if value is None:
        return "null"
    return next((name for kind, name in names if isinstance(value, kind)), type(value).__name__)
