"""Bounded reading of mail bytes: the header block, header values, RFC 2047 words and MIME text parts.

Nothing here knows about Jira. Every function works on a bounded prefix, never raises on the bytes
it is given, and caps what it builds (parts, depth, part-header size, characters handed out).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator

MAX_MIME_PARTS = 64
MAX_MIME_DEPTH = 8
MAX_PART_HEADER_BYTES = 16 * 1024

_HEADER_END = re.compile(rb"(?:\A|\r?\n)\r?\n")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,256}")
_ENCODED_WORD = re.compile(r"=\?(?P<charset>[^?\s]{1,64})\?(?P<encoding>[bBqQ])\?(?P<text>[^?\s]*)\?=")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")
_WHITESPACE = re.compile(r"\s+")
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}")
_PARAMETER = re.compile(
    r';\s*(?P<name>[A-Za-z0-9_.-]{1,64})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.){0,1024})"|(?P<token>[^\s;"]{1,1024}))'
)
_QUOTED_PAIR = re.compile(r"\\(.)")
_HEADER_LINE = re.compile(rb"[!-9;-~]{1,256}[ \t]*:")
_NON_BASE64_BYTES = bytes(
    set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
)

# Python text codecs that are no mail charset; punycode also decodes in quadratic time, so a
# 256 KiB part labelled with it would take many seconds. UTF-7 is the one codec whose "replace"
# decoding still yields lone surrogates ("+2D0-" is U+D83D), which no store, XCom or log can hold: no
# Jira mail uses it, so its bytes are read as UTF-8 like any unknown charset's.
_REFUSED_CODECS = frozenset(
    {"punycode", "idna", "unicode-escape", "raw-unicode-escape", "undefined", "utf-7"}
)


def split_header_block(view: memoryview, max_header_bytes: int) -> tuple[bytes, int] | None:
    """The header block (without its blank line) and where the body starts, or None when the
    header does not end within `max_header_bytes`.

    Only the bounded prefix is copied, so neither the header scan nor the MIME parser sees more;
    "+ 4" leaves room for the CRLFCRLF that ends a header block at the limit.
    """
    head = bytes(view[: max_header_bytes + 4])
    end = _HEADER_END.search(head)
    if end is not None:
        header_block, body_start = head[: end.start()], end.end()
    elif len(view) <= max_header_bytes:
        header_block, body_start = head, len(view)
    else:
        return None
    if len(header_block) > max_header_bytes:
        return None
    return header_block, body_start


# --- headers -----------------------------------------------------------------------------------


def parse_headers(block: bytes) -> dict[str, list[str]]:
    """Unfolded header values by lower-cased name, each name's values in their order."""
    headers: dict[str, list[str]] = {}
    for name, value in header_fields(block):
        headers.setdefault(name, []).append(value)
    return headers


def header_fields(block: bytes) -> list[tuple[str, str]]:
    """The header fields as (lower-cased name, unfolded value), topmost first; non-header lines dropped.

    Done by hand rather than by the email package so that 8-bit bytes, NULs and malformed lines
    can never raise, and so that From is handed to getaddresses before any RFC 2047 decoding.
    """
    text = block.decode("utf-8", "replace")
    fields: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line[:1] in (" ", "\t"):
            # A continuation of a dropped line must not be glued onto the header before it.
            if current is not None:
                current.append(line)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _HEADER_NAME.fullmatch(name):
            current = None
            continue
        current = [value.lstrip(" \t")]
        fields.append((name.lower(), current))
    return [(name, "".join(pieces)) for name, pieces in fields]


def first_text(headers: dict[str, list[str]], name: str, limit: int, *, decode_words: bool) -> str | None:
    values = headers.get(name)
    if not values:
        return None
    value = decode_encoded_words(values[0]) if decode_words else values[0]
    cleaned = clean_text(value)[:limit].strip()
    return cleaned or None


def clean_text(value: str) -> str:
    """One line of printable text: control, bidi-override and zero-width characters become spaces."""
    return _WHITESPACE.sub(" ", _UNSAFE_CHARS.sub(" ", value)).strip()


def decode_encoded_words(value: str) -> str:
    """Decode RFC 2047 encoded words, dropping the whitespace between adjacent ones (RFC 2047 §6.2)."""
    pieces: list[str] = []
    position = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        if not (after_word and not gap.strip()):
            pieces.append(gap)
        pieces.append(_decode_word(match["charset"], match["encoding"], match["text"]))
        position = match.end()
        after_word = True
    pieces.append(value[position:])
    return "".join(pieces)


def _decode_word(charset: str, encoding: str, text: str) -> str:
    data = text.encode("ascii", "replace")
    try:
        if encoding in "bB":
            raw = base64.b64decode(data + b"=" * (-len(data) % 4))
        else:
            raw = binascii.a2b_qp(data, header=True)
    except (binascii.Error, ValueError):
        return "\ufffd"
    # RFC 2231 allows a language suffix: "utf-8*en".
    return decode_bytes(raw, charset.partition("*")[0])


def decode_bytes(data: bytes, charset: str | None) -> str:
    if charset:
        try:
            codec = codecs.lookup(charset)
            if codec.name not in _REFUSED_CODECS:
                return data.decode(codec.name, "replace")
        # Unknown or non-text codecs (LookupError), codecs that reject "replace", odd names: the
        # charset is attacker-chosen, so any failure falls back to UTF-8.
        except Exception:
            pass
    return data.decode("utf-8", "replace")


# --- MIME --------------------------------------------------------------------------------------
#
# A small MIME walker of our own rather than email.parser: the latter builds a Message object per
# part and per header line, which lets a 256 KiB body of tiny parts or header lines cost 50x its
# size in memory, and it recurses once per nesting level. This one works on byte slices, keeps
# only the few headers it needs, and caps depth, parts and part-header size.


class _MimeBudget:
    """Shared limits for one mail's walk: parts visited and characters of text handed out."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self.parts = MAX_MIME_PARTS


def text_parts(headers: dict[str, list[str]], body: bytes, budget: int) -> Iterator[tuple[bool, str]]:
    """Decoded text/plain and text/html parts, ``(is_html, text)``, at most ``budget`` characters in all.

    Only multipart containers are walked (not attached messages). A multipart whose structure
    cannot be followed (no boundary, no delimiter, nested too deep) is read as plain text, so that
    the links in a truncated or broken mail still count.
    """
    limits = _MimeBudget(budget)
    for is_html, text in _walk(headers, body, 0, limits):
        text = text[: limits.chars]
        limits.chars -= len(text)
        yield is_html, text
        if limits.chars <= 0:
            return


def _walk(
    headers: dict[str, list[str]], body: bytes, depth: int, limits: _MimeBudget
) -> Iterator[tuple[bool, str]]:
    limits.parts -= 1
    if limits.parts < 0 or limits.chars <= 0:
        return
    content_type, params = _content_type(first_header(headers, "content-type"))
    if first_header(headers, "content-disposition").split(";", 1)[0].strip().lower() == "attachment":
        return
    if content_type.startswith("multipart/"):
        boundary = params.get("boundary", "")
        parts = _split_multipart(body, boundary) if boundary and depth < MAX_MIME_DEPTH else None
        if parts is None:
            yield False, body.decode("utf-8", "replace")
            return
        for part in parts:
            part_headers, part_body = _split_part(part)
            yield from _walk(part_headers, part_body, depth + 1, limits)
            if limits.parts < 0 or limits.chars <= 0:
                return
    elif content_type in ("text/plain", "text/html"):
        data = _decode_transfer_encoding(body, first_header(headers, "content-transfer-encoding"))
        yield content_type == "text/html", decode_bytes(data, params.get("charset"))


def first_header(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """The lower-cased type (``text/plain`` when missing or invalid, as RFC 2045 says) and parameters."""
    main, _, rest = value.partition(";")
    content_type = main.strip().lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        content_type = "text/plain"
    params: dict[str, str] = {}
    for match in _PARAMETER.finditer(";" + rest):
        name = match["name"].lower()
        if name not in params:
            quoted = match["quoted"]
            params[name] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else match["token"]
    return content_type, params


def _split_multipart(body: bytes, boundary: str) -> Iterator[bytes] | None:
    """The parts between boundary delimiters, or None when the body holds no delimiter at all.

    A body cut short (no close delimiter) still yields its last, partial part.
    """
    delimiters = _delimiters(body, boundary.encode("utf-8", "replace"))
    first = next(delimiters, None)
    if first is None:
        return None
    return _parts_between(body, first, delimiters)


def _delimiters(body: bytes, boundary: bytes) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_close)`` of each delimiter line: "--boundary", at the start of a line.

    The pattern starts with the literal boundary so the regex engine can skip ahead quickly; the
    start-of-line condition is checked afterwards. The line break before a delimiter belongs to
    the delimiter (RFC 2046 §5.1.1), so ``start`` includes it.
    """
    pattern = re.compile(re.escape(b"--" + boundary) + rb"(?P<close>--)?[ \t]*(?:\r?\n|\Z)")
    position = 0
    while (match := pattern.search(body, position)) is not None:
        start = match.start()
        position = start + 1
        if start > 0 and body[start - 1] != 0x0A:
            continue
        if start > 0:
            start -= 2 if start > 1 and body[start - 2] == 0x0D else 1
        yield start, match.end(), match["close"] is not None


def _parts_between(
    body: bytes, first: tuple[int, int, bool], delimiters: Iterator[tuple[int, int, bool]]
) -> Iterator[bytes]:
    _start, part_start, is_close = first
    while not is_close:
        following = next(delimiters, None)
        if following is None:
            yield body[part_start:]
            return
        part_end, next_start, is_close = following
        yield body[part_start:part_end]
        part_start = next_start


def _split_part(part: bytes) -> tuple[dict[str, list[str]], bytes]:
    """A body part's headers (at most MAX_PART_HEADER_BYTES of them) and the bytes after them.

    As in email.feedparser, the header section ends at a blank line or at the first line that is
    neither a header nor a continuation; a part starting with a blank line has no headers.
    """
    position = 0
    header_lines: list[bytes] = []
    limit = min(len(part), MAX_PART_HEADER_BYTES)
    while position < limit:
        end_of_line = part.find(b"\n", position)
        next_position = len(part) if end_of_line < 0 else end_of_line + 1
        line = part[position:next_position].rstrip(b"\r\n")
        if not line:
            position = next_position
            break
        if not (line[:1] in (b" ", b"\t") and header_lines) and not _HEADER_LINE.match(line):
            break
        header_lines.append(line)
        position = next_position
    return parse_headers(b"\n".join(header_lines)), part[position:]


def _decode_transfer_encoding(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "base64":
        # Drop everything outside the alphabet (line breaks, junk) and a trailing partial quantum, so
        # that a body cut off by the size limit or a corrupted one still decodes.
        alphabet_only = data.translate(None, _NON_BASE64_BYTES)
        try:
            return binascii.a2b_base64(alphabet_only[: len(alphabet_only) - len(alphabet_only) % 4])
        except binascii.Error:
            return b""
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    return data
