"""Write the JSON Schema of every wire model to ``schemas/json/`` (``python -m schemas.export``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.usage import UsageEventV1

JSON_DIR = Path(__file__).parent / "json"

MODELS: dict[str, type[BaseModel]] = {
    "usage-event.v1.json": UsageEventV1,
}


def render(model: type[BaseModel]) -> str:
    """The model's JSON Schema as stable, diff-friendly text."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Regenerate every schema file; print the ones that changed."""
    for filename, model in MODELS.items():
        path = JSON_DIR / filename
        text = render(model)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
