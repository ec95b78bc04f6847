"""Answer matching shared by the quickstart and the `contains` / `exact_match` metrics."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower case, NFKC, punctuation and runs of spaces folded to one space (works for Chinese too)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_PUNCT.sub(" ", text).split())


def contains(prediction: str, reference: str) -> bool:
    """The reference appears in the prediction, compared on normalised text and word boundaries."""
    ref, pred = normalize(reference), normalize(prediction)
    if not ref:
        return False
    if _is_cjk(ref):
        return ref.replace(" ", "") in pred.replace(" ", "")
    # a word or number stands between spaces, or next to Chinese characters, which have no spaces ("一共有8个")
    return (
        re.search(rf"(?:^|(?<=[\s\u3400-\u9fff])){re.escape(ref)}(?=$|[\s\u3400-\u9fff])", pred) is not None
    )


def _is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)
