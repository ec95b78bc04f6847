"""Documents in, chunks out: the first half of `lmtailor data synth`.

Readers (.txt, .md, .html, .pdf, .docx) turn a file into sections: a heading path and its text.
markdown-it-py, BeautifulSoup, pypdf and python-docx do the parsing. The chunker then cuts each section
into pieces of at most `max_tokens` tokens of the given tokenizer, overlapping by about `overlap` tokens,
at sentence ends where it can, and puts the heading path in front of every piece so a question
generated from a chunk in the middle of a chapter still knows what the chapter is about.
The chunker is written here: the text splitters that exist (langchain's, chonkie) come with large
dependency trees for some forty lines of work, and none keeps a heading path across sections.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmtailor.errors import DataError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_WIDE = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")  # CJK and its punctuation
# a sentence ends at . ! ? followed by a space, or at a Chinese full stop / mark (no space follows those)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；])")


@dataclass
class Section:
    headings: list[str]
    text: str
    where: str = ""  # e.g. "page 3"


@dataclass
class Chunk:
    document: str  # the file's name as given
    index: int  # 0-based within the document
    headings: list[str]
    text: str
    tokens: int
    where: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            key = f"{self.document}\x1f{' > '.join(self.headings)}\x1f{self.text}"
            self.id = hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def context(self) -> str:
        """The chunk as the generator sees it: heading path, then text."""
        head = " > ".join(self.headings)
        return f"[{head}]\n{self.text}" if head else self.text


def language(text: str) -> str:
    """'zh' when over a fifth of the letters are CJK characters, else 'en'."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "en"
    return "zh" if sum(bool(_CJK.match(c)) for c in letters) / len(letters) > 0.2 else "en"


# ------------------------------------------------------------------ readers


def read_document(path: str | Path) -> list[Section]:
    """Sections of one document; a file that cannot be read is a DataError naming it and why."""
    p = Path(path)
    suffix = p.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(
            str(p),
            None,
            f"cannot read {suffix or 'files without a suffix'}: lmtailor reads {', '.join(SUFFIXES)}",
        )
    if not p.is_file():
        raise DataError(str(p), None, "no such file")
    try:
        sections = reader(p)
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(str(p), None, f"not UTF-8 text ({e.reason} at byte {e.start})") from e
    except Exception as e:  # a parser's own error on a broken file: say which file and what the parser said
        raise DataError(str(p), None, f"cannot parse the {suffix[1:]} file: {type(e).__name__}: {e}") from e
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise DataError(str(p), None, "no text found (a scanned PDF needs OCR first)")
    return sections


class _Outline:
    """Text under its heading path, as a reader meets headings and blocks in document order."""

    def __init__(self, default: list[str] | None = None):
        self.sections: list[Section] = []
        self.path: list[tuple[int, str]] = []
        self.body: list[str] = []
        self.default = default or []

    @property
    def headings(self) -> list[str]:
        return [h for _, h in self.path] or list(self.default)

    def heading(self, level: int, text: str) -> None:
        self._flush()
        self.path = [(lv, h) for lv, h in self.path if lv < level] + [(level, text)]

    def text(self, text: str) -> None:
        self.body.append(text)

    def done(self) -> list[Section]:
        self._flush()
        return self.sections

    def _flush(self) -> None:
        self.sections.extend(_text_sections("\n".join(self.body), self.headings))
        self.body.clear()


def _text_sections(text: str, headings: list[str] | None = None, where: str = "") -> list[Section]:
    return [Section(list(headings or []), text.strip(), where)] if text.strip() else []


def read_txt(p: Path) -> list[Section]:
    return _text_sections(p.read_text(encoding="utf-8"))


def read_markdown(p: Path) -> list[Section]:
    """Headings from markdown-it's token stream; the text of each block from its source lines."""
    from markdown_it import MarkdownIt

    source = p.read_text(encoding="utf-8")
    lines = source.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(source)
    outline = _Outline()
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            outline.heading(int(tok.tag[1]), tokens[i + 1].content.strip())
        elif tok.level == 0 and tok.map and tok.nesting >= 0 and tok.type not in ("heading_close", "inline"):
            block = "\n".join(lines[tok.map[0] : tok.map[1]])
            outline.text(re.sub(r"^\s{0,3}(?:[-*+]|\d+[.)])\s+", "", block, flags=re.M))
    return outline.done()


_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def read_html(p: Path) -> list[Section]:
    """Block elements in document order under their h1–h6 path; scripts, styles and navigation dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(p.read_bytes(), "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    outline = _Outline([title] if title else [])
    for el in soup.find_all([*_HEADINGS, *_BLOCKS]):
        if el.name in _HEADINGS:
            outline.heading(int(el.name[1]), el.get_text(" ", strip=True))
        elif not el.find(_BLOCKS):  # innermost blocks only: an <li> holding a <p> is read once
            text = el.get_text(" ", strip=True)
            if text:
                outline.text(text)
    sections = outline.done()
    if not sections:  # no block elements at all: the page's text
        sections = _text_sections(soup.get_text("\n", strip=True), [title] if title else [])
    return sections


def read_pdf(p: Path) -> list[Section]:
    """One section per page (pypdf's text layer; PDFs carry no reliable headings), titled by the metadata."""
    from pypdf import PdfReader

    reader = PdfReader(str(p))
    title = (reader.metadata.title if reader.metadata else None) or ""
    return [
        s
        for n, page in enumerate(reader.pages, 1)
        for s in _text_sections(_unwrap(page.extract_text() or ""), [title] if title else [], f"page {n}")
    ]


def _unwrap(text: str) -> str:
    """A PDF's lines joined back into paragraphs (a blank line still ends one): its line breaks are layout."""
    return re.sub(
        r"(?<=\S)[ \t]*\n[ \t]*(?=\S)",
        lambda m: "" if _WIDE.match(text[m.start() - 1]) or _WIDE.match(text[m.end()]) else " ",
        text,
    )


def read_docx(p: Path) -> list[Section]:
    """Paragraphs under their 'Heading N' / 'Title' paragraphs; tables row by row."""
    import docx

    doc = docx.Document(str(p))
    outline = _Outline()
    for para in doc.paragraphs:
        style = (para.style.name if para.style is not None else "") or ""
        text = para.text.strip()
        level = (
            0 if style == "Title" else int(m.group(1)) if (m := re.match(r"Heading (\d)", style)) else None
        )
        if level is not None and text:
            outline.heading(level, text)
        elif text:
            outline.text(text)
    sections = outline.done()
    path = outline.headings
    for table in doc.tables:
        rows = [" | ".join(c.text.strip() for c in row.cells) for row in table.rows]
        sections.extend(_text_sections("\n".join(rows), path))
    return sections


READERS: dict[str, Callable[[Path], list[Section]]] = {
    ".txt": read_txt,
    ".md": read_markdown,
    ".markdown": read_markdown,
    ".html": read_html,
    ".htm": read_html,
    ".pdf": read_pdf,
    ".docx": read_docx,
}


# ------------------------------------------------------------------ chunking


def _units(text: str) -> list[str]:
    """Paragraphs split into sentences: the pieces a chunk boundary may fall between."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n|\n", text):
        out.extend(s.strip() for s in _SENTENCE.split(para.strip()) if s.strip())
    return out


def _join(units: list[str]) -> str:
    """Sentences back into text: a space between English ones, none next to Chinese text or punctuation."""
    out = ""
    for u in units:
        if out and not (_WIDE.match(out[-1]) or _WIDE.match(u[0])):
            out += " "
        out += u
    return out


def chunk_sections(
    sections: list[Section],
    document: str,
    count: Callable[[str], int],
    max_tokens: int = 300,
    overlap: int = 40,
) -> list[Chunk]:
    """Chunks of at most `max_tokens` (heading path included), overlapping by about `overlap` tokens.

    Sentences are kept whole; one longer than a chunk is cut by tokens on its own."""
    if max_tokens < 32:
        raise ValueError(f"chunk size {max_tokens} tokens: at least 32")
    if not 0 <= overlap < max_tokens // 2:
        raise ValueError(f"overlap {overlap} tokens: from 0 to half the chunk size ({max_tokens // 2})")
    chunks: list[Chunk] = []
    for sec in sections:
        budget = max(16, max_tokens - count(" > ".join(sec.headings)) - 4) if sec.headings else max_tokens
        pieces: list[tuple[str, int]] = []
        for unit in _units(sec.text):
            n = count(unit)
            pieces.extend(_split_long(unit, n, budget, count) if n > budget else [(unit, n)])
        current: list[tuple[str, int]] = []
        for piece in pieces:
            if current and sum(n for _, n in current) + piece[1] > budget:
                chunks.append(_chunk(document, len(chunks), sec, current, count))
                kept: list[tuple[str, int]] = []  # the tail of this chunk starts the next one
                for prev in reversed(current):
                    if sum(n for _, n in kept) + prev[1] > overlap:
                        break
                    kept.insert(0, prev)
                if not kept and overlap:  # the last sentence alone is longer than the overlap: its tail
                    kept = [_tail(current[-1][0], overlap, count)]
                current = kept if sum(n for _, n in kept) + piece[1] <= budget else []
            current.append(piece)
        if current:
            chunks.append(_chunk(document, len(chunks), sec, current, count))
    return chunks


def _chunk(document: str, index: int, sec: Section, pieces: list[tuple[str, int]], count) -> Chunk:
    text = _join([t for t, _ in pieces])
    return Chunk(document, index, list(sec.headings), text, count(text), sec.where)


def _split_long(unit: str, n: int, budget: int, count: Callable[[str], int]) -> list[tuple[str, int]]:
    """A sentence longer than a chunk, cut into pieces of about `budget` tokens (by characters, measured)."""
    parts: list[tuple[str, int]] = []
    step = max(1, int(len(unit) * budget / n * 0.9))
    start = 0
    while start < len(unit):
        piece = unit[start : start + step]
        while count(piece) > budget and len(piece) > 1:
            piece = piece[: int(len(piece) * 0.9)]
        parts.append((piece.strip(), count(piece)))
        start += len(piece)
    return [(t, c) for t, c in parts if t]


def _tail(text: str, tokens: int, count: Callable[[str], int]) -> tuple[str, int]:
    """The end of `text` within `tokens` tokens, starting at a word (or, in Chinese, any character)."""
    start = max(0, len(text) - tokens * 4)
    while start < len(text):
        piece = text[start:]
        if not _WIDE.match(piece[0]) and start and not text[start - 1].isspace():
            start += 1
            continue
        n = count(piece)
        if n <= tokens:
            return piece.strip(), n
        start += max(1, (len(text) - start) // 10)
    return "", 0


def token_counter(tokenizer) -> Callable[[str], int]:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_documents(
    paths: list[str | Path], count: Callable[[str], int], max_tokens: int = 300, overlap: int = 40
) -> list[Chunk]:
    """Every chunk of every document, in order; a folder stands for the documents in it (recursively)."""
    return chunk_read(read_documents(paths), count, max_tokens, overlap)


def read_documents(paths: list[str | Path]) -> list[tuple[Path, list[Section]]]:
    """Each document's sections; a bad file fails here, before anything is chunked (or a model loaded)."""
    return [(path, read_document(path)) for path in expand(paths)]


def chunk_read(
    documents: list[tuple[Path, list[Section]]],
    count: Callable[[str], int],
    max_tokens: int = 300,
    overlap: int = 40,
) -> list[Chunk]:
    """The chunks of documents already read (read_documents), in order."""
    return [
        c
        for path, sections in documents
        for c in chunk_sections(sections, path.name, count, max_tokens, overlap)
    ]


def expand(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders replaced by the readable documents under them (sorted); none found is an error."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(str(p), None, f"no documents ({', '.join(SUFFIXES)}) in this folder")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise DataError(str(p), None, "no such file or folder")
    return out
