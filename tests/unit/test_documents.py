"""Reading and chunking documents of every type, in English and Chinese (fixtures made here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lmtailor.data.documents import chunk_documents, chunk_sections, language, read_document, token_counter
from lmtailor.errors import DataError

# `make test` installs fonts-wqy-zenhei when no CJK font is there (the Makefile's browser target)
CJK_FONTS = [Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"), Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
             Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc")]  # fmt: skip

EN = {
    "title": "Valve Manual",
    "sections": [
        ("Safety", [f"Rule {i}: the red valve {i} opens at {40 + i} degrees." for i in range(1, 13)]),
        ("Maintenance", [f"Step {i}: clean filter {i} every {i + 2} weeks." for i in range(1, 13)]),
    ],
}
ZH = {
    "title": "阀门手册",
    "sections": [
        ("安全", [f"第{i}条：{i}号红色阀门在{40 + i}度时打开。" for i in range(1, 13)]),
        ("维护", [f"第{i}步：每{i + 2}周清洗{i}号过滤器。" for i in range(1, 13)]),
    ],
}


def _joiner(doc) -> str:
    return "" if doc is ZH else " "


def write_txt(doc, path: Path) -> None:
    j = _joiner(doc)
    path.write_text("\n\n".join(j.join(s) for _, s in doc["sections"]), encoding="utf-8")


def write_md(doc, path: Path) -> None:
    j = _joiner(doc)
    body = "\n\n".join(
        f"## {h}\n\n{j.join(s[:6])}\n\n- {s[6]}\n- {j.join(s[7:])}" for h, s in doc["sections"]
    )
    path.write_text(f"# {doc['title']}\n\n{body}\n", encoding="utf-8")


def write_html(doc, path: Path) -> None:
    j = _joiner(doc)
    body = "".join(
        f"<h2>{h}</h2><p>{j.join(s[:6])}</p><ul><li><p>{s[6]}</p></li><li>{j.join(s[7:])}</li></ul>"
        for h, s in doc["sections"]
    )
    html = (
        f"<html><head><title>{doc['title']}</title><style>p {{color: red}}</style></head><body>"
        f"<nav>Home | About</nav><h1>{doc['title']}</h1>{body}<script>var x = 1;</script></body></html>"
    )
    path.write_text(html, encoding="utf-8")


def write_docx(doc, path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading(doc["title"], level=0)
    for h, sentences in doc["sections"]:
        d.add_heading(h, level=1)
        for s in sentences:
            d.add_paragraph(s)
    d.save(str(path))


def write_pdf(doc, path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(doc["title"])
    if doc is ZH:
        font = next((f for f in CJK_FONTS if f.exists()), None)
        if font is None:
            pytest.fail("no CJK font for the Chinese PDF: `make system` installs fonts-wqy-zenhei")
        pdf.add_font("cjk", fname=str(font))
        pdf.set_font("cjk", size=11)
    else:
        pdf.set_font("helvetica", size=11)
    for h, sentences in doc["sections"]:
        pdf.add_page()
        pdf.multi_cell(0, 7, h, new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(0, 7, _joiner(doc).join(sentences), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


WRITERS = {".txt": write_txt, ".md": write_md, ".html": write_html, ".docx": write_docx, ".pdf": write_pdf}
HEADINGS = {".md": True, ".html": True, ".docx": True, ".txt": False, ".pdf": False}


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("suffix", list(WRITERS))
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_each_type_is_chunked_with_overlap_and_headings(suffix, lang, tmp_path, tokenizer):
    doc = EN if lang == "en" else ZH
    path = tmp_path / f"manual{suffix}"
    WRITERS[suffix](doc, path)
    count = token_counter(tokenizer)
    chunks = chunk_documents([path], count, max_tokens=80, overlap=20)

    assert len(chunks) >= 4, "24 sentences of ~15 tokens make several 80-token chunks"
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.document == path.name for c in chunks)
    for c in chunks:  # the heading path and the text together stay within the chunk size
        assert count(" > ".join(c.headings)) + c.tokens <= 80 + 4, c
        assert language(c.text) == lang
    # every sentence is in some chunk, whole (PDF text layers may move spaces: compared without them)
    joined = [_squash(c.text) for c in chunks]
    for _, sentences in doc["sections"]:
        for s in sentences:
            assert any(_squash(s) in j for j in joined), s
    # neighbouring chunks of one section share their boundary sentence(s)
    shared = 0
    for a, b in zip(chunks, chunks[1:], strict=False):
        if a.headings == b.headings and a.where == b.where:
            first = _squash(re.split(r"(?<=[.。])", b.text)[0])
            assert first in _squash(a.text), (a.text, b.text)
            shared += 1
    assert shared >= 2
    if HEADINGS[suffix]:  # the section's heading path travels with each of its chunks
        safety, upkeep = doc["sections"][0][0], doc["sections"][1][0]
        first_rule, last_step = doc["sections"][0][1][0], doc["sections"][1][1][-1]
        for c in chunks:
            if _squash(first_rule) in _squash(c.text):
                assert c.headings == [doc["title"], safety]
            if _squash(last_step) in _squash(c.text):
                assert c.headings == [doc["title"], upkeep]
                assert c.context.startswith(f"[{doc['title']} > {upkeep}]\n")
    if suffix == ".pdf":
        assert {c.where for c in chunks} == {"page 1", "page 2"}
    if suffix == ".html":
        assert not any("var x" in c.text or "Home | About" in c.text for c in chunks)
    if lang == "zh":  # Chinese sentences are joined without spaces
        assert all(" " not in c.text for c in chunks if suffix != ".pdf")


def test_a_sentence_longer_than_a_chunk_is_cut_by_tokens(tokenizer):
    from lmtailor.data.documents import Section

    count = token_counter(tokenizer)
    long = "长" * 400 + "。"
    chunks = chunk_sections([Section([], long)], "x.txt", count, max_tokens=64, overlap=0)
    assert len(chunks) > 2 and all(c.tokens <= 64 for c in chunks)
    assert "".join(c.text for c in chunks) == long


def test_unreadable_documents_are_named_with_the_reason(tmp_path):
    bad_pdf = tmp_path / "broken.pdf"
    bad_pdf.write_bytes(b"%PDF-1.4 this is not a pdf")
    with pytest.raises(DataError, match=r"broken\.pdf: cannot parse the pdf file"):
        read_document(bad_pdf)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 text"):
        read_document(latin)
    with pytest.raises(DataError, match=r"notes\.rtf: cannot read \.rtf"):
        read_document(tmp_path / "notes.rtf")
    empty = tmp_path / "empty.md"
    empty.write_text("#  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text found"):
        read_document(empty)
    with pytest.raises(DataError, match="no documents"):
        chunk_documents([tmp_path / "nothing-here"], len) if (
            tmp_path / "nothing-here"
        ).mkdir() is None else None


def test_language_detection():
    assert language("The valve opens at 40 degrees.") == "en"
    assert language("阀门在40度时打开。The valve.") == "zh"
    assert language("12345") == "en"
