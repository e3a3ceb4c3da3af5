"""The README is for users: short, its parameter table generated from the help text, and free of
what belongs in docs/results.md (dates, machines, commits)."""

import re
from pathlib import Path

import pytest

from slotlib.config.table import END, START, parameter_table, readme_block, replace_block, yaml_value

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_parameter_table_is_the_generated_one():
    assert readme_block(README) == parameter_table(), (
        "README's parameter table is out of date: run `python -m slotlib.config.table --write README.md`")


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("pattern, what", [
    (r"20\d\d-\d\d-\d\d", "a date"),
    (r"(?i)this machine", "'this machine'"),
    (r"`[0-9a-f]{7,40}`", "a commit hash"),
])
def test_the_readme_has_no_session_details(pattern, what):
    found = re.search(pattern, README)
    assert found is None, f"README holds {what}: {found.group(0)!r} (measurements and their history: docs/results.md)"


def test_defaults_are_written_as_yaml():
    assert [yaml_value(v) for v in (None, True, False, (0.7, 0.15), 4e-4, "auto", 16.0)] == [
        "null", "true", "false", "[0.7, 0.15]", "0.0004", "auto", "16.0"]


def test_a_new_section_and_a_pipe_in_help_text_are_handled():
    from slotlib.config.fields import param
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Head:
        head_gain: float = param(2.0, "a | b")
        head_mode: str | None = param(None, "mode")

    fields = {f.name: ("my_head", f) for f in dataclasses.fields(Head)}
    lines = parameter_table(fields).splitlines()
    assert lines[2] == "| **My Head** | `head_gain` | `2.0` | a \\| b |"
    assert lines[3] == "|  | `head_mode` | `null` | mode |"


def test_write_replaces_only_the_block():
    text = f"intro\n{START}\nold\n{END}\noutro\n"
    assert replace_block(text, "new") == f"intro\n{START}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError):
        replace_block("no markers", "new")
