"""Report text in English or Chinese: its language, its sentences with their offsets, and the
kind of exam a section header names.

`split_sentences` cuts at . ; ! ? and their full-width forms 。；！？ and at line ends, and gives
each section header ("ECG:", "Impression:", "心电图：") a unit of its own, so that the labeller
and the grounding read one statement at a time and know which exam it belongs to. A period
ends a sentence only before a space, a line end or a CJK character ("3.8 mV" and "approx.
35%" stay whole); a question mark only after a word and before a space ("?LBBB" and "LBBB?"
keep their question mark, which is an uncertainty cue); nothing inside brackets ends a
sentence ("(II, III, aVF; 2 mm)"). `mmcardio.sentences` keeps its own splitter for training
augmentation, which needs neither offsets nor headers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
#: Abbreviations whose period does not end a sentence (compared lower-case, without the period).
#: ("min", "no" and "etc" are left out: "rate 52/min." and "... etc." end sentences.)
ABBREVIATIONS = frozenset({"approx", "appr", "ca", "cf", "dr", "e.g", "eg", "esp", "fig", "i.e", "ie",
                           "incl", "mr", "mrs", "nr", "resp", "vs"})
_ALWAYS_END = "。；！？;"
_OPEN, _CLOSE = "([{（【［", ")]}）】］"

#: Section headers of cardiology reports by the exam they introduce ("summary" for report
#: parts that belong to no one exam). A header is one of these words, after at most two
#: modifier words (EN) or a few characters (ZH), ending in a colon that no number follows
#: other than a list's first item ("钙化积分：512" is a value, not a header; "诊断：1. 窦性心律" is one).
SECTION_WORDS: dict[str, tuple[str, ...]] = {
    "ecg": (r"ECG", r"EKG", r"electrocardiogram", r"electrocardiography", r"Holter", r"rhythm strip",
            r"心电图"),
    "echo": (r"echo", r"echocardiogram", r"echocardiography", r"TTE", r"TEE", r"TOE", r"ultrasound",
             r"超声心动图", r"彩超", r"超声", r"心脏超声"),
    "cmr": (r"CMR", r"MRI", r"cardiac MR", r"magnetic resonance", r"磁共振", r"核磁"),  # not "MR:" (mitral)
    "ct": (r"CT", r"CTA", r"CCTA", r"calcium scor(?:e|ing)", r"钙化积分", r"钙化评分"),
    "summary": (r"impression", r"conclusions?", r"summary", r"interpretation", r"diagnos[ie]s",
                r"findings", r"results?", r"report", r"comments?", r"opinion", r"assessment",
                r"recommendations?", r"comparison", r"indications?", r"(?:clinical )?history",
                r"clinical information", r"technique", r"measurements",
                r"结论", r"诊断", r"诊断意见", r"意见", r"印象", r"提示", r"所见", r"检查所见", r"结果",
                r"检查结果", r"建议", r"病史", r"临床资料", r"总结", r"小结", r"测量"),
}
_ANY_WORD = "|".join(sorted((w for ws in SECTION_WORDS.values() for w in ws), key=len, reverse=True))
_HEADER = re.compile(
    rf"(?:(?:[A-Za-z0-9][\w-]*\s+){{0,2}}|[\u4e00-\u9fffA-Za-z0-9-]{{0,8}}?)(?:{_ANY_WORD})\s*[:：]"
    r"(?!\s*[-+]?\d(?<!1)|\s*1(?![.、．]\s*\D))", re.IGNORECASE)  # "钙化积分：512" is a value, "诊断：1. ..." a header
_KINDS = {kind: re.compile(rf"(?<![A-Za-z])(?:{'|'.join(words)})(?![A-Za-z])", re.IGNORECASE)
          for kind, words in SECTION_WORDS.items()}


@dataclass(frozen=True)
class Sentence:
    """One sentence (or header) of a text: `text` is `original[start:end]`."""

    text: str
    start: int
    end: int


def detect_language(text: str) -> str:
    """"zh" when the text holds any CJK character, else "en"."""
    return "zh" if _CJK.search(text) else "en"


def section_kind(header: str) -> str | None:
    """The exam a section header names: "ecg", "echo", "cmr", "ct", "summary", or None when
    `header` is not a header. "Cardiac CT:" is ct, "超声提示：" echo, "诊断意见：" summary."""
    if not is_header(header):
        return None
    return next(kind for kind, pattern in _KINDS.items() if pattern.search(header))


def is_header(text: str) -> bool:
    """True when `text` is a whole section header ("12-lead ECG:", "心电图：")."""
    match = _HEADER.match(text.strip())
    return bool(match) and match.end() == len(text.strip())


def split_sentences(text: str, lang: str | None = None) -> list[Sentence]:
    """The sentences and section headers of `text`, in order, with their offsets in `text`
    (surrounding spaces left out; a sentence keeps its final punctuation)."""
    lang = lang or detect_language(text)
    out: list[Sentence] = []
    for line in re.finditer(r"[^\n\r]+", text):
        for start, end in _line_pieces(line.group(), lang):
            out += _with_headers(text, line.start() + start, line.start() + end)
    return out


def _line_pieces(line: str, lang: str) -> list[tuple[int, int]]:
    """(start, end) of the sentences of one line."""
    inside, markers = _bracketed(line), _list_markers(line)
    pieces, start = [], 0
    for i in range(len(line)):
        if i in markers and line[start:i].strip():
            pieces.append((start, i))
            start = i
        if not inside[i] and _ends_sentence(line, i, start) and not _numbers_item(line, i, markers):
            pieces.append((start, i + 1))
            start = i + 1
    pieces.append((start, len(line)))
    return pieces


def _list_markers(line: str) -> set[int]:
    """Where numbered items start ("1. ", "2、"): at the line start, or after a CJK character or
    a sentence end ("窦性心律 2. 完全性右束支传导阻滞"), not after an English word ("rate 72. PR")."""
    out = set()
    for m in re.finditer(r"\d{1,2}[.、．](?![\d.])", line):
        before = line[:m.start()].rstrip()
        if m.start() > 0 and (line[m.start() - 1].isdigit() or line[m.start() - 1] in ".,"):
            continue
        after_colon = bool(before) and before[-1] in ":：" and m.group().startswith("1")
        if not before or after_colon or _CJK.match(before[-1]) or before[-1] in _ALWAYS_END + ".!?":
            out.add(m.start())
    return out


def _numbers_item(line: str, i: int, markers: set[int]) -> bool:
    """True when the period at `i` is a list marker's ("2. ")."""
    j = i
    while j > 0 and i - j < 2 and line[j - 1].isdigit():
        j -= 1
    return j < i and j in markers


def _bracketed(line: str) -> list[bool]:
    """Per character: inside a matched pair of brackets (unmatched ones are ignored)."""
    inside, stack = [False] * len(line), []
    for i, ch in enumerate(line):
        if ch in _OPEN:
            stack.append(i)
        elif ch in _CLOSE and stack:
            opened = stack.pop()
            for k in range(opened + 1, i):
                inside[k] = True
    return inside


def _ends_sentence(line: str, i: int, start: int) -> bool:
    ch, after = line[i], line[i + 1] if i + 1 < len(line) else ""
    if ch in _ALWAYS_END:
        return True
    if ch not in ".!?":
        return False
    followed = after == "" or after.isspace() or bool(_CJK.match(after))
    if ch == "!":
        return followed
    if ch == "?":
        return followed and i > start and not line[i - 1].isspace()
    if not followed or line[i + 1:].strip().startswith("."):  # "..." ends at its last period
        return False
    word = re.search(r"([\w.]+)$", line[start:i])
    if word is None:
        return True
    token = word.group(1).lower()
    if token in ABBREVIATIONS:
        return False
    return not (token.isdigit() and len(token) <= 2 and not line[start:i - len(token)].strip())


def _with_headers(text: str, start: int, end: int) -> list[Sentence]:
    """The piece text[start:end] stripped, its leading section header split off."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == end:
        return []
    match = _HEADER.match(text, start, end)
    if match and match.end() < end:
        return [Sentence(text[start:match.end()], start, match.end()), *_with_headers(text, match.end(), end)]
    return [Sentence(text[start:end], start, end)]
