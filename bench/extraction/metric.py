"""Format success, strictly: the whole output is one JSON object with exactly the required keys
and value types, nothing before or after it.

Whitespace rule: leading and trailing whitespace (spaces, tabs, newlines) is allowed and
ignored; anything else outside the object (a markdown fence, a sentence, a second object) fails.
Types: "string" is a JSON string; "integer" a JSON number without fraction or exponent;
"number" any JSON number (integer or not). Booleans are not numbers. NaN/Infinity, duplicate
keys and single quotes fail (they are not JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


class _Invalid(ValueError):
    pass


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise _Invalid("duplicate key")
    return dict(pairs)


def _reject_constant(name):
    raise _Invalid(f"{name} is not JSON")


def _is_type(value, kind: str, raw: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int)
    if kind == "number":
        return isinstance(value, (int, float)) and math.isfinite(value)
    raise ValueError(f"unknown field type {kind!r}")


@dataclass(frozen=True)
class Score:
    format_ok: bool
    fields_correct: int
    fields_total: int
    reason: str = ""


def parse_strict(text: str, schema: dict[str, str]) -> tuple[dict | None, str]:
    """The parsed object when `text` meets the format, else None and why."""
    stripped = text.strip(" \t\r\n")
    if not stripped.startswith("{"):
        return None, "does not start with {"
    try:
        value = json.loads(
            stripped, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_int=int
        )
    except (json.JSONDecodeError, _Invalid) as exc:
        return None, f"not one JSON object: {exc}"
    if not isinstance(value, dict):
        return None, "not an object"
    if set(value) != set(schema):
        return None, f"keys {sorted(value)} != {sorted(schema)}"
    for key, kind in schema.items():
        if not _is_type(value[key], kind, stripped):
            return None, f"{key} is not a {kind}"
    return value, ""


def score(text: str, reference: dict, schema: dict[str, str]) -> Score:
    """Format success, and how many fields equal the reference (0 when the format fails)."""
    value, reason = parse_strict(text, schema)
    if value is None:
        return Score(False, 0, len(schema), reason)
    correct = 0
    for key, kind in schema.items():
        got, want = value[key], reference[key]
        if kind == "string":
            correct += got == want
        else:
            correct += math.isclose(float(got), float(want), rel_tol=0, abs_tol=1e-9)
    return Score(True, correct, len(schema))


def summarize(scores: list[Score]) -> dict:
    n = len(scores)
    fields = sum(s.fields_total for s in scores)
    return {
        "n": n,
        "format_success": sum(s.format_ok for s in scores) / n if n else None,
        "field_accuracy": sum(s.fields_correct for s in scores) / fields if fields else None,
    }
