"""Readers (JSONL, JSON, CSV, Parquet), format detection, conversion to Record, load_records fail/skip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lmtailor.data.formats import (
    BadRowsError,
    detect_format,
    load_records,
    read_rows,
    to_record,
)
from lmtailor.data.records import Message
from lmtailor.errors import DataError

CHAT = {
    "messages": [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么可以帮你？"},
    ]
}
ALPACA = {"instruction": "Translate to French", "input": "cat", "output": "chat"}
SHAREGPT = {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(path: Path) -> list[tuple[int, object]]:
    return list(read_rows(path))


# ---------------------------------------------------------------- readers


def test_jsonl_lines_are_one_based_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(f"{json.dumps(CHAT)}\n\n   \n{json.dumps(ALPACA)}\n", encoding="utf-8")
    assert rows_of(path) == [(1, CHAT), (4, ALPACA)]


def test_jsonl_invalid_json_is_yielded_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(f"{json.dumps(CHAT)}\n{{oops\n[1, 2]\n", encoding="utf-8")
    rows = rows_of(path)
    assert rows[0] == (1, CHAT)
    line, err = rows[1]
    assert line == 2 and isinstance(err, DataError) and err.line == 2
    assert err.reason.startswith("invalid JSON: ")
    line, err = rows[2]
    assert isinstance(err, DataError) and err.line == 3
    assert err.reason == "expected a JSON object, got array"


def test_utf8_bom_is_tolerated_and_chinese_survives(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT, ensure_ascii=False).encode("utf-8") + b"\n")
    assert rows_of(path) == [(1, CHAT)]


def test_non_utf8_file_is_a_clear_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(
        json.dumps(ALPACA).encode() + b"\n" + json.dumps(CHAT, ensure_ascii=False).encode("gbk") + b"\n"
    )
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert info.value.line == 2
    assert "not UTF-8" in info.value.reason and "save the file as UTF-8" in info.value.reason


def test_line_separator_inside_a_string_does_not_split_a_line(tmp_path: Path) -> None:
    row = {"instruction": "a\u2028b", "output": "c"}
    path = tmp_path / "d.json"  # .json holding JSONL: read as text, then line by line
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(ALPACA) + "\n", encoding="utf-8")
    assert rows_of(path) == [(1, row), (2, ALPACA)]


def test_json_array_rows_are_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([CHAT, ALPACA, "x"], ensure_ascii=False, indent=2), encoding="utf-8")
    rows = rows_of(path)
    assert rows[:2] == [(1, CHAT), (2, ALPACA)]
    assert isinstance(rows[2][1], DataError) and rows[2][1].line == 3


def test_json_file_holding_jsonl_falls_back_to_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(f"{json.dumps(CHAT)}\n{json.dumps(SHAREGPT)}\n{{bad\n", encoding="utf-8")
    rows = rows_of(path)
    assert rows[:2] == [(1, CHAT), (2, SHAREGPT)]
    assert isinstance(rows[2][1], DataError) and rows[2][1].line == 3


def test_broken_json_array_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{oops}\n]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        rows_of(path)
    assert info.value.line == 3 and info.value.reason.startswith("invalid JSON: ")


def test_csv_header_is_line_one_and_messages_column_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages", "reference"])
        w.writerow([json.dumps(CHAT["messages"], ensure_ascii=False), "ref-1"])
        w.writerow([])
        w.writerow(["[oops", "ref-2"])
    rows = rows_of(path)
    assert rows[0] == (2, {"messages": CHAT["messages"], "reference": "ref-1"})
    line, err = rows[1]
    assert line == 4 and isinstance(err, DataError)
    assert err.reason.startswith("invalid JSON in column 'messages': ")


def test_csv_alpaca_with_multiline_cell_keeps_start_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text(
        '\ufeffinstruction,input,output\n"line one\nline two",,out\nsecond,,中文输出\nx,y,z,extra\n',
        encoding="utf-8",
    )
    rows = rows_of(path)
    assert rows[0] == (2, {"instruction": "line one\nline two", "input": "", "output": "out"})
    assert rows[1] == (4, {"instruction": "second", "input": "", "output": "中文输出"})
    assert isinstance(rows[2][1], DataError) and rows[2][0] == 5
    assert rows[2][1].reason == "row has 4 fields but the header has 3"


def test_parquet_rows_numbered_from_one_with_nested_messages(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    table = pa.Table.from_pylist(
        [
            {
                "messages": [
                    {"role": "user", "content": "q1"},
                    {"role": "assistant", "content": "a1", "weight": 0},
                ]
            },
            {"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]},
        ]
    )
    pq.write_table(table, path)
    rows = rows_of(path)
    assert [line for line, _ in rows] == [1, 2]
    # Parquet structs fill a missing field with None; a None weight means "not given".
    assert rows[1][1]["messages"][1] == {"role": "assistant", "content": "答", "weight": None}
    result = load_records(path, check=None)
    assert [m.weight for m in result.records[0].messages] == [1, 0]
    assert result.records[1].messages[1] == Message("assistant", "答", 1)


def test_missing_file_and_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_records(tmp_path / "nope.jsonl")
    assert info.value.line is None and info.value.reason == "file not found"
    txt = tmp_path / "d.txt"
    txt.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(txt)
    assert info.value.line is None and info.value.reason.startswith("unsupported file type '.txt'")


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (CHAT, "chat"),
        (ALPACA, "alpaca"),
        (SHAREGPT, "sharegpt"),
        ({"prompt": "x"}, None),
        ({"instruction": "x"}, None),
    ],
)
def test_detect_format(row: dict, fmt: str | None) -> None:
    assert detect_format(row) == fmt


def test_chat_row_keeps_weights_and_extra_keys() -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hi", "weight": 1},
        ],
        "reference": "Hi",
        "id": 7,
    }
    rec = to_record(row, "chat", "d.jsonl", 3)
    assert [(m.role, m.content, m.weight) for m in rec.messages] == [
        ("system", "Be brief.", 1),
        ("user", "Hi", 1),
        ("assistant", "Hello there", 0),
        ("user", "Again", 1),
        ("assistant", "Hi", 1),
    ]
    assert rec.extra == {"reference": "Hi", "id": 7}
    assert (rec.source, rec.line) == ("d.jsonl", 3)


def test_alpaca_with_system_history_and_input() -> None:
    row = {
        "system": "You translate.",
        "history": [["Hello", "Bonjour"]],
        "instruction": "Translate to French",
        "input": "cat",
        "output": "chat",
        "category": "mt",
    }
    rec = to_record(row, "alpaca", "d.jsonl", 1)
    assert rec.as_dicts() == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Translate to French\n\ncat"},
        {"role": "assistant", "content": "chat"},
    ]
    assert rec.extra == {"category": "mt"}


def test_alpaca_blank_input_and_system_are_left_out() -> None:
    rec = to_record({"instruction": "Say hi", "input": "  ", "output": "hi", "system": ""}, "alpaca", "d", 1)
    assert rec.as_dicts() == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]


def test_sharegpt_roles_are_mapped() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "user", "value": "q2"},
            {"from": "model", "value": "a2"},
        ],
        "id": "x1",
    }
    rec = to_record(row, "sharegpt", "d", 1)
    assert [m.role for m in rec.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [m.content for m in rec.messages] == ["S", "q1", "a1", "q2", "a2"]
    assert rec.extra == {"id": "x1"}


@pytest.mark.parametrize(
    ("row", "fmt", "reason"),
    [
        ({"messages": []}, "chat", "'messages' is empty"),
        ({"messages": "hi"}, "chat", "'messages' must be a list of messages, got a string"),
        ({"messages": [{"role": "user"}]}, "chat", "messages[0].content is missing"),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "chat",
            "messages[0].content must be a string, got number",
        ),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "chat",
            'messages[0].role must be one of system, user, assistant, got "bot"',
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 2},
                ]
            },
            "chat",
            "messages[1].weight must be 0 or 1, got 2",
        ),
        (
            {"messages": [{"role": "user", "content": "q", "weight": 0}]},
            "chat",
            "messages[0].weight is only allowed on assistant messages, not on 'user'",
        ),
        ({"instruction": "i"}, "alpaca", "'output' is missing"),
        ({"instruction": ["i"], "output": "o"}, "alpaca", "'instruction' must be a string, got array"),
        (
            {"instruction": "i", "output": "o", "history": [["only one"]]},
            "alpaca",
            "history[0] must be a [user, assistant] pair",
        ),
        (
            {"conversations": [{"from": "bot", "value": "x"}]},
            "sharegpt",
            'conversations[0].from must be one of human, user, gpt, assistant, model, system, got "bot"',
        ),
        ({"conversations": [{"from": "human"}]}, "sharegpt", "conversations[0].value is missing"),
    ],
)
def test_structural_problems_have_precise_reasons(row: dict, fmt: str, reason: str) -> None:
    with pytest.raises(DataError) as info:
        to_record(row, fmt, "d.jsonl", 9)
    assert info.value.reason == reason
    assert str(info.value) == f"d.jsonl:9: {reason}"


# ---------------------------------------------------------------- load_records


def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(CHAT, ensure_ascii=False),  # 1 ok
        json.dumps(ALPACA),  # 2 ok
        "{not json",  # 3 invalid JSON
        json.dumps(SHAREGPT),  # 4 ok
        json.dumps({"prompt": "x"}),  # 5 unknown format
        json.dumps({"messages": [{"role": "user", "content": "q"}]}),  # 6 ends with user
        json.dumps(
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
        ),  # 7
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_skip_keeps_good_rows_and_reports_each_bad_line(tmp_path: Path) -> None:
    result = load_records(mixed_file(tmp_path), on_error="skip")
    assert [r.line for r in result.records] == [1, 2, 4]
    assert result.formats == {"chat": 1, "alpaca": 1, "sharegpt": 1}
    assert [e.line for e in result.errors] == [3, 5, 6, 7]
    reasons = [e.reason for e in result.errors]
    assert reasons[0].startswith("invalid JSON: ")
    assert reasons[1].startswith("unknown row format: expected 'messages' (chat)") and reasons[1].endswith(
        "keys: prompt"
    )
    assert reasons[2] == "last message is 'user'; a training row must end with an assistant message"
    assert reasons[3] == "empty content in the assistant message (messages[1])"
    assert result.records[0].messages[1].content == "你好！有什么可以帮你？"


def test_fail_raises_one_error_listing_every_bad_row(tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    with pytest.raises(BadRowsError) as info:
        load_records(path)
    err = info.value
    assert [e.line for e in err.errors] == [3, 5, 6, 7]
    lines = str(err).splitlines()
    assert lines[0] == f"{path}: 4 bad rows:"
    assert lines[1].startswith(f"  {path}:3: invalid JSON: ")
    assert (
        lines[3] == f"  {path}:6: last message is 'user'; a training row must end with an assistant message"
    )


def test_fail_lists_at_most_twenty_and_counts_the_rest(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": i} for i in range(25)])
    with pytest.raises(BadRowsError) as info:
        load_records(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 + 20 + 1
    assert lines[20].startswith(f"  {path}:20: unknown row format")
    assert lines[-1] == "  … and 5 more"


def test_explicit_format_applies_to_every_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [ALPACA, CHAT])
    result = load_records(path, fmt="alpaca", on_error="skip")
    assert [r.line for r in result.records] == [1]
    assert result.errors[0].line == 2 and result.errors[0].reason == "'instruction' is missing"
    with pytest.raises(DataError, match="unknown format 'yaml'"):
        load_records(path, fmt="yaml")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_records(path, on_error="skip")
    assert info.value.reason == "no rows" and info.value.line is None


def test_check_none_keeps_prompt_only_rows(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "2+2?"}], "reference": "4"}
    result = load_records(write_jsonl(tmp_path / "eval.jsonl", [row]), check=None)
    assert result.records[0].extra == {"reference": "4"}
    assert result.records[0].to_chat() == row


def test_chinese_round_trip_through_every_reader(tmp_path: Path) -> None:
    expected = [("user", "你好"), ("assistant", "你好！有什么可以帮你？")]
    jsonl = write_jsonl(tmp_path / "d.jsonl", [CHAT])
    array = tmp_path / "d.json"
    array.write_text(json.dumps([CHAT], ensure_ascii=False), encoding="utf-8")
    csv_path = tmp_path / "d.csv"
    with csv_path.open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows([["messages"], [json.dumps(CHAT["messages"], ensure_ascii=False)]])
    for path in (jsonl, array, csv_path):
        rec = load_records(path).records[0]
        assert [(m.role, m.content) for m in rec.messages] == expected, path
