"""Help text of the command-line programs (tyro): option descriptions reflowed.

tyro shows an option's docstring (the string under a dataclass field) with its source line
breaks, so a description wrapped at 120 columns in the code breaks mid-sentence in
``--help``. `reflow_help` makes tyro join a docstring's wrapped lines into paragraphs (its
own rule for class docstrings: blank lines and lines that open with a non-letter, such as
list items, still break). Every splat program calls it before `tyro.cli`.
"""
from __future__ import annotations

__all__ = ["reflow_help"]

_installed = False


def reflow_help() -> None:
    """Install the reflowing once (a no-op where tyro's internals differ from 1.x's)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from tyro import _docstrings, _strings
    except ImportError:  # another tyro layout: leave its help as it is
        return
    original = getattr(_docstrings, "get_field_docstring", None)
    join = getattr(_strings, "remove_single_line_breaks", None)
    if original is None or join is None:
        return

    def get_field_docstring(cls, field_name, markers):
        text = original(cls, field_name, markers)
        return join(text) if isinstance(text, str) and "\n" in text else text

    _docstrings.get_field_docstring = get_field_docstring
