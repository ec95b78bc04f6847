"""How a model grader (score_model, label_model) asks its model: through an OpenAI-compatible chat endpoint, this
server's own or one named `openai:MODEL@BASE_URL` (its key in $LMTAILOR_ENDPOINT_API_KEY). The graders endpoint
and reinforcement fine-tuning both ask this way."""

from __future__ import annotations

import os

from lmtailor.models.endpoint import parse_endpoint


def make_ask(base_url: str, api_key: str | None):
    """ask(model, messages, sampling_params) -> (text, tokens), through an OpenAI-compatible chat endpoint."""

    def ask(model: str, messages: list[dict], params: dict) -> tuple[str, int]:
        import openai

        endpoint = parse_endpoint(model)
        url, key, name = base_url, api_key, model
        if endpoint is not None:
            url, key, name = (
                endpoint.base_url or base_url,
                os.environ.get("LMTAILOR_ENDPOINT_API_KEY"),
                endpoint.model,
            )
        client = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=1, timeout=120)
        kw = {k: params[k] for k in ("temperature", "top_p", "seed") if params.get(k) is not None}
        if params.get("max_completions_tokens"):
            kw["max_tokens"] = params["max_completions_tokens"]
        reply = client.chat.completions.create(model=name, messages=messages, **{"temperature": 0, **kw})
        usage = reply.usage.total_tokens if reply.usage else 0
        return reply.choices[0].message.content or "", usage

    return ask
