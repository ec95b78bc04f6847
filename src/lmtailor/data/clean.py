"""Cleaning: trim, drop empty and over-long rows, exact and near duplicates, optional PII masking.

Near duplicates are found with MinHash over character 5-gram shingles (so Chinese text, which has no
spaces, works as well as English), banded LSH for candidates, then exact Jaccard on the candidates.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from lmtailor.data.records import Message, Record
from lmtailor.data.validate import token_length
from lmtailor.errors import LmtailorError

REPORT_KEYS = (
    "input",
    "kept",
    "empty",
    "too_short",
    "duplicate",
    "near_duplicate",
    "too_long",
    "emails_masked",
    "phones_masked",
)
SHINGLE = 5

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# [0-9] rather than \d (which also matches full-width digits), explicit look-arounds rather than \b
# (there is no word boundary between a Chinese character and a digit).
PHONE_RE = re.compile(
    r"(?<![0-9A-Za-z+])(?:"
    r"\+[0-9]{1,3}(?:[-\s.]?\(?[0-9]{1,4}\)?){2,5}"  # international: +44 20 7946 0958, +1 (555) 123-4567
    r"|(?:86[-\s]?)?1[3-9][0-9](?:[-\s]?[0-9]{4}){2}"  # Chinese mobile: 13812345678, 138-1234-5678
    r"|(?:\([0-9]{3}\)\s?|[0-9]{3}[-.\s])[0-9]{3}[-.\s][0-9]{4}"  # North American: (555) 123-4567
    r"|0[1-9][0-9]{1,2}-[0-9]{7,8}"  # Chinese landline: 010-12345678
    r")(?![0-9])"
)


def clean_records(
    records: Iterable[Record],
    *,
    dedup: bool = True,
    near_dup_threshold: float | None = 0.9,
    min_chars: int = 1,
    max_tokens: int | None = None,
    tokenizer: Any = None,
    mask_pii: bool = False,
) -> tuple[list[Record], dict[str, int]]:
    """The records worth keeping (trimmed, masked) and a count per reason of what was dropped or masked.

    The first of a group of duplicates is kept. near_dup_threshold=None turns near-dup removal off;
    dedup=False turns off both kinds. max_tokens needs a tokenizer (chat-template token count).
    """
    _check_options(near_dup_threshold, min_chars, max_tokens, tokenizer)
    report: Counter[str] = Counter(dict.fromkeys(REPORT_KEYS, 0))
    near = _NearDupIndex(near_dup_threshold) if dedup and near_dup_threshold is not None else None
    seen: set[bytes] = set()
    kept = []
    for rec in records:
        report["input"] += 1
        rec = _trimmed(rec)
        if mask_pii:
            rec = _masked(rec, report)
        key = _exact_key(rec)
        shingles = _shingles(_near_dup_text(rec)) if near else frozenset()
        reason = (
            _too_short(rec, min_chars)
            or ("duplicate" if dedup and key in seen else None)
            or ("too_long" if max_tokens is not None and token_length(tokenizer, rec) > max_tokens else None)
            or ("near_duplicate" if near and near.has_near_duplicate(shingles) else None)
        )
        if reason:
            report[reason] += 1
            continue
        seen.add(key)
        if near:
            near.add(shingles)
        kept.append(rec)
    report["kept"] = len(kept)
    return kept, dict(report)


def _check_options(threshold: float | None, min_chars: int, max_tokens: int | None, tokenizer: Any) -> None:
    if threshold is not None and not 0 < threshold <= 1:
        raise LmtailorError(f"near_dup_threshold must be in (0, 1], got {threshold}")
    if min_chars < 0:
        raise LmtailorError(f"min_chars must be 0 or more, got {min_chars}")
    if max_tokens is not None and max_tokens <= 0:
        raise LmtailorError(f"max_tokens must be positive, got {max_tokens}")
    if max_tokens is not None and tokenizer is None:
        raise LmtailorError("max_tokens needs a tokenizer to count tokens")


def _trimmed(rec: Record) -> Record:
    return replace(rec, messages=[replace(m, content=m.content.strip()) for m in rec.messages])


def _too_short(rec: Record, min_chars: int) -> str | None:
    if any(not m.content for m in rec.messages):
        return "empty"
    if any(len(m.content) < min_chars for m in rec.messages):
        return "too_short"
    return None


# ---------------------------------------------------------------- PII


def mask_pii_text(text: str) -> tuple[str, int, int]:
    """Text with e-mail addresses as <EMAIL> and phone numbers as <PHONE>, and how many of each."""
    text, emails = EMAIL_RE.subn("<EMAIL>", text)
    phones = 0

    def phone(match: re.Match[str]) -> str:
        nonlocal phones
        digits = sum(c.isdigit() for c in match.group())
        if not 7 <= digits <= 15:  # E.164 allows at most 15 digits
            return match.group()
        phones += 1
        return "<PHONE>"

    return PHONE_RE.sub(phone, text), emails, phones


def _masked(rec: Record, report: Counter[str]) -> Record:
    messages: list[Message] = []
    for m in rec.messages:
        content, emails, phones = mask_pii_text(m.content)
        report["emails_masked"] += emails
        report["phones_masked"] += phones
        messages.append(replace(m, content=content))
    return replace(rec, messages=messages)


# ---------------------------------------------------------------- duplicates


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the text two rows are compared on."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _exact_key(rec: Record) -> bytes:
    text = "\x1e".join(f"{m.role}\x1f{normalize_text(m.content)}" for m in rec.messages)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _near_dup_text(rec: Record) -> str:
    """The conversation without system messages: a long shared system prompt would make every row alike."""
    return "\n".join(normalize_text(m.content) for m in rec.messages if m.role != "system")


def _shingles(text: str) -> frozenset[int]:
    """Character 5-grams, hashed to 32 bits (crc32: stable across processes, unlike hash())."""
    if len(text) <= SHINGLE:
        return frozenset({zlib.crc32(text.encode())})
    return frozenset(zlib.crc32(text[i : i + SHINGLE].encode()) for i in range(len(text) - SHINGLE + 1))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_PRIME = 4294967291  # largest prime below 2**32: a * x + b stays below 2**64 for 32-bit a, x, b


class _NearDupIndex:
    """MinHash signatures in LSH bands; candidates sharing a band are confirmed by exact Jaccard."""

    def __init__(self, threshold: float, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.threshold = threshold
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.rows = _rows_per_band(threshold, num_perm)
        self.bands: list[defaultdict[bytes, list[int]]] = [
            defaultdict(list) for _ in range(num_perm // self.rows)
        ]
        self.kept: list[frozenset[int]] = []
        self._last: tuple[frozenset[int], list[bytes]] | None = None

    def has_near_duplicate(self, shingles: frozenset[int]) -> bool:
        keys = self._band_keys(shingles)
        candidates = {j for band, key in zip(self.bands, keys, strict=True) for j in band.get(key, ())}
        return any(jaccard(shingles, self.kept[j]) >= self.threshold for j in candidates)

    def add(self, shingles: frozenset[int]) -> None:
        keys = self._band_keys(shingles)
        for band, key in zip(self.bands, keys, strict=True):
            band[key].append(len(self.kept))
        self.kept.append(shingles)

    def _band_keys(self, shingles: frozenset[int]) -> list[bytes]:
        if self._last is not None and self._last[0] is shingles:  # has_near_duplicate then add
            return self._last[1]
        sig = self._signature(shingles)
        keys = [sig[i : i + self.rows].tobytes() for i in range(0, len(sig), self.rows)]
        self._last = (shingles, keys)
        return keys

    def _signature(self, shingles: frozenset[int]) -> np.ndarray:
        x = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(x), 4096):  # bounded memory for very long rows
            hashed = (np.outer(x[start : start + 4096], self.a) + self.b) % np.uint64(_PRIME)
            np.minimum(sig, hashed.min(axis=0), out=sig)
        return sig


def _rows_per_band(threshold: float, num_perm: int) -> int:
    """The most rows per band that still finds a pair at the threshold with probability ≥ 99.5%."""
    for rows in (8, 4, 2):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.995:
            return rows
    return 1
