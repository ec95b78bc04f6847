"""A model reference that names an OpenAI-compatible endpoint: `openai:MODEL@BASE_URL`.

Evaluation, the judge, synthesis and model graders ask such models over HTTP instead of loading them.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmtailor.errors import ModelError

ENDPOINT_PREFIX = "openai:"


@dataclass(frozen=True)
class Endpoint:
    model: str
    base_url: str | None


def parse_endpoint(ref: str) -> Endpoint | None:
    """`openai:MODEL@BASE_URL` (or `openai:MODEL`, base URL from $OPENAI_BASE_URL) as an Endpoint, else None."""
    if not ref.startswith(ENDPOINT_PREFIX):
        return None
    model, at, url = ref[len(ENDPOINT_PREFIX) :].rpartition("@")
    if not at:
        model, url = url, ""
    if not model:
        raise ModelError(
            f"{ref!r}: write an endpoint as openai:MODEL@BASE_URL, e.g. openai:m@http://127.0.0.1:8000/v1"
        )
    return Endpoint(model, url or None)
