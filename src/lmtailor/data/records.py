"""The one canonical row every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass
class Message:
    role: Role
    content: str
    # OpenAI's per-message weight: 0 keeps an assistant turn as context but out of the loss.
    weight: int = 1


@dataclass
class Record:
    """One conversation, with where it came from (file and 1-based line or row number)."""

    messages: list[Message]
    source: str = ""
    line: int | None = None
    # Extra keys of the row that are not part of the conversation (e.g. "reference", "id").
    extra: dict[str, Any] = field(default_factory=dict)

    def to_chat(self) -> dict[str, Any]:
        """The row in lmtailor's chat format (weights written only where they are 0)."""
        msgs = []
        for m in self.messages:
            d: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.weight == 0:
                d["weight"] = 0
            msgs.append(d)
        return {"messages": msgs, **self.extra}

    def as_dicts(self) -> list[dict[str, str]]:
        """Messages as plain dicts, as chat templates take them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]
