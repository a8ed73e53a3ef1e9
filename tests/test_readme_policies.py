"""README's table of what each ``@checkpointed`` policy keeps (issue 19 item 2) exists, names
every policy, says what each keeps for acknowledged, in-flight, retried and resent calls, and
agrees with the decorator's docstring."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
POLICIES = ["`every_calls=1`", "`every_calls=N`", "`every_seconds=T`", "manual"]
COLUMNS = ["acknowledged", "retried by Ray", "resent without `request_id`",
           "resent with `request_id`"]


def _table() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("### What each policy keeps"):]
    section = section[:section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 2 + len(POLICIES), "no policy table under 'What each policy keeps'"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_table_names_each_policy_and_column() -> None:
    header, _, *body = _table()
    for column in COLUMNS:
        assert any(column in h for h in header), f"no column for {column!r}: {header}"
    for policy in POLICIES:
        rows = [r for r in body if r[0].startswith(policy)]
        assert len(rows) == 1, f"the table has no (or several) rows for {policy}"
        assert len(rows[0]) == len(header) and all(rows[0]), rows[0]


def test_table_says_what_is_lost_and_what_is_exact() -> None:
    _, _, *body = _table()
    by_policy = {p: next(r for r in body if r[0].startswith(p)) for p in POLICIES}
    assert "kept" in by_policy["`every_calls=1`"][1]
    for policy in POLICIES[1:]:
        row = by_policy[policy]
        assert "lost" in row[1], f"{policy}: acknowledged calls since the checkpoint are lost"
        assert "at least once" in row[2] and "at least once" in row[3], row
    for row in by_policy.values():
        assert row[4].startswith("exactly once"), row   # a resend under the same id


def test_docstring_names_the_same_guarantees() -> None:
    module = importlib.import_module("stages.actors.checkpointed")  # not the decorator
    doc = re.sub(r"\s+", " ", module.__doc__ or "")
    assert "What each policy keeps" in doc
    for phrase in ["at-most-once for acknowledged calls", "at-least-once for retried or resent",
                   "``every_calls=1`` is *exactly-once*", "``every_seconds=T``",
                   "manual checkpoints", "``request_id=``"]:
        assert phrase in doc, phrase
