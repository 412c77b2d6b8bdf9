"""The code examples of README.md, found by the marker comment in front of each."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

_BLOCK = r"<!-- example: {name} -->\n```(?P<lang>[a-z]+)\n(?P<code>.*?)\n```\n"


def readme_example(name: str, language: str) -> str:
    """The fenced block right after ``<!-- example: name -->``, which must be ``language``."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(_BLOCK.format(name=re.escape(name)), text, flags=re.DOTALL)
    assert len(found) == 1, f"README.md needs exactly one example marked {name!r}"
    ((lang, code),) = found
    assert lang == language, f"example {name!r} is {lang}, not {language}"
    return str(code) + "\n"


def npm_install_spec() -> str:
    """The amqplib version the README tells Node.js users to install (``amqplib@2``)."""
    match = re.search(r"`npm install (amqplib@[0-9][^`\s]*)`", README.read_text(encoding="utf-8"))
    assert match, "README.md should say which amqplib to install (`npm install amqplib@N`)"
    return match.group(1)
