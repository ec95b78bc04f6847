"""The one canonical row every reader produces and every later stage consumes, and its rules for SFT."""

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


def validate_record(rec: Record) -> str | None:
    """The reason a record is unusable for SFT, or None when it is fine."""
    if not rec.messages:
        return "no messages"
    for check in (_empty_content, _role_order, _ends_with_assistant, _has_trained_turn):
        reason = check(rec)
        if reason:
            return reason
    return None


def _empty_content(rec: Record) -> str | None:
    for i, m in enumerate(rec.messages):
        if not m.content.strip():
            return f"empty content in the {m.role} message (messages[{i}])"
    return None


def _role_order(rec: Record) -> str | None:
    """System only first; then user/assistant alternating, starting with user."""
    start = 1 if rec.messages[0].role == "system" else 0
    for i, m in enumerate(rec.messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m.role == "system":
            return f"system message at messages[{i}]; only the first message may be a system message"
        if m.role != expected:
            return (
                f"messages[{i}] is '{m.role}' where '{expected}' was expected "
                "(turns alternate user/assistant, starting with user)"
            )
    if start == len(rec.messages):
        return "only a system message; no user or assistant turns"
    return None


def _ends_with_assistant(rec: Record) -> str | None:
    last = rec.messages[-1].role
    if last != "assistant":
        return f"last message is '{last}'; a training row must end with an assistant message"
    return None


def _has_trained_turn(rec: Record) -> str | None:
    if not any(m.role == "assistant" and m.weight == 1 for m in rec.messages):
        return "no assistant turn to learn from (every assistant message has weight 0)"
    return None
