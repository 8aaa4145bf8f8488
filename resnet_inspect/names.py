"""Text that comes from outside the tool (model and file names, messages of the model's own errors), made safe to
show: one meaningful line, valid UTF-8, and no control sequence a terminal would act on.

No torch and no rendering here: the loader, the capture, the renderers and the command line all use these rules.
"""

from __future__ import annotations

import re

# ESC-introduced sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL or ESC \`, other two-byte escapes), the C1
# CSI and OSC introducers with their bodies, then any other C0 or C1 control and DEL. Tab and newline stay.
# Then Unicode's bidirectional formatting characters (embeddings, overrides, isolates and marks: U+202A-U+202E,
# U+2066-U+2069, U+200E, U+200F, U+061C), which reorder the text around them: a name holding U+202E shows its
# tail reversed and pulls the next cells of a table row with it.
_CONTROL_SEQUENCES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, ended by BEL or ST
    r"|\x9b[0-?]*[ -/]*[@-~]"  # C1 CSI
    r"|\x9d[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # C1 OSC
    r"|\x1b[@-_]?"  # any other escape
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
    r"|[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"  # bidirectional formatting
)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a file name that were not UTF-8 (kept by Python as lone surrogates) are
    shown as ``\\xNN``, the way Python shows bytes; everything else is unchanged."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def strip_controls(text: str) -> str:
    """``text`` without terminal control sequences (ESC, CSI, OSC, BEL and every other C0 or C1 control but tab and
    newline) and without bidirectional formatting characters: a name can colour, retitle or rewrite a terminal
    with the first, and reverse the text that follows it with the second."""
    return _CONTROL_SEQUENCES.sub("", text)


def shown(text: str) -> str:
    """``text`` as every output shows it: valid UTF-8 (``printable``), without control sequences or bidirectional
    formatting (``strip_controls``)."""
    return strip_controls(printable(text))


def first_line(text: str) -> str:
    """The first line of ``text`` that says something, its runs of white space collapsed ('' when none does).

    A line that only introduces the next (``ValueError: `` before a newline) is joined to it."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def call_name(name: str, call: int) -> str:
    """The name of a module's ``call``-th run (from 1): its own name, then ``stage (call 2)``, ``stage (call 3)``."""
    return name if call == 1 else f"{name} (call {call})"


__all__ = ["call_name", "first_line", "printable", "shown", "strip_controls"]
