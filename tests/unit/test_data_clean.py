"""clean_records: trimming, empty rows, exact and near duplicates (English and Chinese), PII, length."""

from __future__ import annotations

import random

import pytest

from lmtailor.data.clean import clean_records, jaccard, mask_pii_text
from lmtailor.data.records import Message, Record
from lmtailor.errors import LmtailorError

EN_ANSWER = (
    "To reset your password, open Settings, choose Account, then Security, and press the Reset button. "
    "We will send a confirmation link to the e-mail address on file; it stays valid for twenty-four hours."
)
ZH_ANSWER = (
    "要重置密码，请打开设置，选择账户，然后进入安全页面并点击重置按钮。我们会向您登记的电子邮箱发送一封确认邮件，"
    "邮件中的链接在二十四小时内有效。如果没有收到邮件，请检查垃圾邮件文件夹，或者联系我们的客服团队获取帮助。"
    "为了保护账户安全，新密码至少需要八个字符，并且同时包含字母和数字，请不要使用与其他网站相同的密码。"
)


def qa(question: str, answer: str, line: int = 0, system: str | None = None) -> Record:
    messages = [Message("system", system)] if system else []
    messages += [Message("user", question), Message("assistant", answer)]
    return Record(messages=messages, source="d.jsonl", line=line)


def lines(records: list[Record]) -> list[int | None]:
    return [r.line for r in records]


def test_trims_and_keeps_distinct_rows_without_changing_the_input() -> None:
    original = qa("  How do I reset my password?\n", EN_ANSWER + "  ", 1)
    kept, report = clean_records([original, qa("What is 2+2?", "4", 2)])
    assert lines(kept) == [1, 2]
    assert kept[0].messages[0].content == "How do I reset my password?"
    assert kept[0].messages[1].content == EN_ANSWER
    assert original.messages[0].content == "  How do I reset my password?\n"
    assert report["input"] == 2 and report["kept"] == 2 and report["duplicate"] == 0


def test_report_has_every_key_even_when_zero() -> None:
    _, report = clean_records([qa("q", "a", 1)])
    assert report == {
        "input": 1,
        "kept": 1,
        "empty": 0,
        "too_short": 0,
        "duplicate": 0,
        "near_duplicate": 0,
        "too_long": 0,
        "emails_masked": 0,
        "phones_masked": 0,
    }


def test_drops_empty_and_too_short_rows() -> None:
    rows = [qa("q", "   ", 1), qa("hi", "ok", 2), qa("What is the capital of France?", "Paris", 3)]
    kept, report = clean_records(rows, min_chars=3)
    assert lines(kept) == [3]
    assert (report["empty"], report["too_short"], report["kept"]) == (1, 1, 1)


def test_exact_duplicates_ignore_case_width_and_whitespace() -> None:
    rows = [
        qa("What is 2+2?", "Four.", 1),
        qa("what  is 2+2?", "FOUR.", 2),
        qa("What is ２＋２?", "Four.", 3),  # full-width digits, NFKC-equal
        qa("What is 2+2?", "Four.", 4, system="Be brief."),  # another system prompt: not an exact duplicate
    ]
    kept, report = clean_records(rows, near_dup_threshold=None)
    assert lines(kept) == [1, 4]
    assert report["duplicate"] == 2
    # Near duplicates compare the conversation without its system prompt, so row 4 goes there.
    kept, report = clean_records(rows)
    assert lines(kept) == [1]
    assert (report["duplicate"], report["near_duplicate"]) == (2, 1)


def test_near_duplicates_in_english() -> None:
    near = EN_ANSWER.replace("twenty-four hours", "twenty four hours")
    rows = [
        qa("How do I reset my password?", EN_ANSWER, 1),
        qa("How do I reset my password?", near, 2),
        qa(
            "How do I change my e-mail address?",
            "Open Settings, choose Account, and edit the address field.",
            3,
        ),
    ]
    kept, report = clean_records(rows)
    assert lines(kept) == [1, 3]
    assert report["near_duplicate"] == 1 and report["duplicate"] == 0


def test_near_duplicates_in_chinese() -> None:
    near = ZH_ANSWER.replace("确认邮件", "验证邮件")
    other = "您可以在订单页面查看物流信息，点击订单号即可看到快递公司和运单号码，以及预计送达的时间。"
    rows = [
        qa("怎么重置密码？", ZH_ANSWER, 1),
        qa("怎么重置密码？", near, 2),
        qa("我的快递到哪了？", other, 3),
    ]
    kept, report = clean_records(rows)
    assert lines(kept) == [1, 3]
    assert report["near_duplicate"] == 1


def test_threshold_and_switches_control_near_dup_removal() -> None:
    rows = [
        qa("How do I reset my password?", EN_ANSWER, 1),
        qa("How do I reset my password?", EN_ANSWER + " Thanks!", 2),
    ]
    assert lines(clean_records(rows)[0]) == [1]
    assert lines(clean_records(rows, near_dup_threshold=None)[0]) == [1, 2]
    assert lines(clean_records(rows, near_dup_threshold=1.0)[0]) == [1, 2]
    assert lines(clean_records(rows + [qa("How do I reset my password?", EN_ANSWER, 3)], dedup=False)[0]) == [
        1,
        2,
        3,
    ]


def test_a_shared_system_prompt_does_not_make_rows_near_duplicates() -> None:
    system = "You are the support assistant of Example Corp. " * 20
    rows = [qa("What is 2+2?", "4", 1, system), qa("What is the capital of Italy?", "Rome", 2, system)]
    kept, _ = clean_records(rows)
    assert lines(kept) == [1, 2]


def test_near_dup_search_scales_past_pairwise_and_finds_each_copy() -> None:
    rnd = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rnd.choices(words, k=60)) for _ in range(400)]
    rows = [qa(f"question {i}", t, i) for i, t in enumerate(texts)]
    copies = [qa(f"question {i}", texts[i] + " ok", 1000 + i) for i in range(0, 400, 20)]
    kept, report = clean_records(rows + copies)
    assert report["near_duplicate"] == 20
    assert lines(kept) == list(range(400))


def test_jaccard() -> None:
    assert jaccard(frozenset({1, 2, 3}), frozenset({2, 3, 4})) == 0.5
    assert jaccard(frozenset(), frozenset()) == 1.0


@pytest.mark.parametrize(
    ("text", "masked", "emails", "phones"),
    [
        ("Write to jane.doe+work@example.co.uk today", "Write to <EMAIL> today", 1, 0),
        ("联系邮箱：zhang.san@example.cn，谢谢", "联系邮箱：<EMAIL>，谢谢", 1, 0),
        ("手机13812345678，或者138-1234-5678", "手机<PHONE>，或者<PHONE>", 0, 2),
        ("Call +86 138 1234 5678 or +44 20 7946 0958.", "Call <PHONE> or <PHONE>.", 0, 2),
        ("US office: (555) 123-4567 / 555.123.4567", "US office: <PHONE> / <PHONE>", 0, 2),
        ("座机010-12345678", "座机<PHONE>", 0, 1),
        ("mail a@b.io, phone +1 (555) 123-4567", "mail <EMAIL>, phone <PHONE>", 1, 1),
    ],
)
def test_pii_masking(text: str, masked: str, emails: int, phones: int) -> None:
    assert mask_pii_text(text) == (masked, emails, phones)


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2024-01-15, version 3.12.1",
        "Order 123456789012345678 costs ¥1,299.00",
        "Room 1203, 42 apples, pi is 3.14159",
        "ID 2381234567890",  # 13 digits starting like a mobile number: not a phone on its own
    ],
)
def test_pii_masking_leaves_other_numbers_alone(text: str) -> None:
    assert mask_pii_text(text) == (text, 0, 0)


def test_mask_pii_in_clean_records_counts_and_replaces() -> None:
    rows = [qa("My e-mail is bob@example.com and my phone 13912345678", "Thanks, noted.", 1)]
    kept, report = clean_records(rows, mask_pii=True)
    assert kept[0].messages[0].content == "My e-mail is <EMAIL> and my phone <PHONE>"
    assert (report["emails_masked"], report["phones_masked"]) == (1, 1)
    assert clean_records(rows)[0][0].messages[0].content == rows[0].messages[0].content


class CharTokenizer:
    """A stand-in for a tokenizer's length only: one token per character of content."""

    def apply_chat_template(
        self, messages: list[dict[str, str]], tokenize: bool = True
    ) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for m in messages for c in m["content"]]}


def test_max_tokens_drops_long_rows() -> None:
    rows = [qa("short", "row", 1), qa("a longer question", "with a longer answer", 2)]
    kept, report = clean_records(rows, max_tokens=10, tokenizer=CharTokenizer())
    assert lines(kept) == [1]
    assert report["too_long"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 10}, "max_tokens needs a tokenizer"),
        ({"near_dup_threshold": 0}, "near_dup_threshold must be in"),
        ({"near_dup_threshold": 1.5}, "near_dup_threshold must be in"),
        ({"min_chars": -1}, "min_chars must be 0 or more"),
    ],
)
def test_bad_options_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(LmtailorError, match=message):
        clean_records([qa("q", "a")], **kwargs)
