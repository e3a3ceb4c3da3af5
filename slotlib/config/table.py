"""The parameter table of the README, generated from the parameters' own help text.

    python -m slotlib.config.table                      # print the classifier's table
    python -m slotlib.config.table discovery            # print the object-discovery table
    python -m slotlib.config.table --write README.md    # rewrite the README's block

The README holds the classifier's table between ``<!-- parameters:start -->`` and
``<!-- parameters:end -->``; ``tests/test_docs.py`` checks that it equals :func:`parameter_table`, so a
new parameter, default or help text reaches the README by rerunning the ``--write`` command.
Sections are grouped in the order the fields come; a section this module does not know (a head's
own section, say) is titled from its name.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

START = "<!-- parameters:start -->"
END = "<!-- parameters:end -->"

Fields = Mapping[str, tuple[str, dataclasses.Field]]


def yaml_value(value: Any) -> str:
    """A default as a parameters file would write it: null, true/false, [0.7, 0.15, 0.15], 0.0004."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def section_title(name: str) -> str:
    return name.replace("_", " ").title()


def _cell(text: str) -> str:
    """One table cell: one line, and a '|' that does not end the cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def parameter_table(fields: Fields | None = None) -> str:
    """A Markdown table (section, parameter, default, meaning) of ``fields``, by default the classifier's.

    ``fields`` maps each flat name to (section name, dataclass field), as ``slotlib.config.FIELDS``
    does; the meaning is the field's ``metadata["help"]``.
    """
    if fields is None:
        from . import FIELDS as fields   # the classifier's parameters, train.ipynb's
    lines = ["| section | parameter | default | meaning |", "| --- | --- | --- | --- |"]
    previous = None
    for name, (section, f) in fields.items():
        title = f"**{section_title(section)}**" if section != previous else ""
        previous = section
        default = f"`{_cell(yaml_value(f.default))}`"
        lines.append(f"| {title} | `{name}` | {default} | {_cell(f.metadata['help'])} |")
    return "\n".join(lines)


def discovery_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """DiscoveryConfig's fields in the shape of ``FIELDS``: one section, 'discovery'."""
    from .discover import DiscoveryConfig

    return {f.name: ("discovery", f) for f in dataclasses.fields(DiscoveryConfig)}


def replace_block(text: str, table: str) -> str:
    """``text`` with the lines between the two markers replaced by ``table``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"expected one '{START}' followed by one '{END}'")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def readme_block(text: str) -> str:
    """The table between the markers of ``text``, without the newlines around it."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slotlib.config.table", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", choices=("classify", "discovery"), default="classify",
                        help="the classifier's parameters (train.ipynb) or object discovery's")
    parser.add_argument("--write", metavar="README", help="rewrite the block between the markers of this file")
    args = parser.parse_args(argv)
    if args.write and args.which == "discovery":
        parser.error("--write rewrites the README's classifier table; print the discovery table without it")
    table = parameter_table(discovery_fields() if args.which == "discovery" else None)
    if not args.write:
        print(table)
        return 0
    path = Path(args.write)
    try:
        path.write_text(replace_block(path.read_text(), table))
    except (OSError, ValueError) as e:
        print(f"slotlib.config.table: {path}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
