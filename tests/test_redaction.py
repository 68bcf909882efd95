"""Unit tests of `agentrun.redaction`: every form of a value, in text, bytes and streams."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import logging
import re
import urllib.parse
from collections.abc import Callable

import pytest

from agentrun.redaction import (
    RedactingFilter,
    Redactor,
    UnredactableValue,
    install_log_redaction,
    remove_log_redaction,
)

TOKEN = "ghp_A1b2+C3d/4E5f=6G7h?8I9j&0K"
"""Holds characters each encoding treats specially (`+ / = ? &`)."""
UNICODE = 'pässwörd "quoted" \\ back/slash €😀 end'
NAME = "GITHUB_TOKEN"
MARK = f"[REDACTED:{NAME}]"
MARK_B = MARK.encode()

B64_ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "std": base64.b64encode,
    "std-nopad": lambda b: base64.b64encode(b).rstrip(b"="),
    "urlsafe": base64.urlsafe_b64encode,
    "urlsafe-nopad": lambda b: base64.urlsafe_b64encode(b).rstrip(b"="),
}


@functools.cache
def redactor(value: str = TOKEN) -> Redactor:
    return Redactor({NAME: value})


def b64_chars(encoded: str) -> set[str]:
    return set(encoded) - {"="}


@pytest.mark.parametrize("value", [TOKEN, UNICODE])
def test_plain_value_is_replaced_anywhere_in_text(value: str) -> None:
    text = f"before {value} middle{value}after\n{value}"
    assert redactor(value).redact(text) == f"before {MARK} middle{MARK}after\n{MARK}"


@pytest.mark.parametrize("value", [TOKEN, UNICODE])
def test_plain_value_is_replaced_in_bytes(value: str) -> None:
    data = b"\x00\xff" + value.encode() + b"\x80tail"
    assert redactor(value).redact_bytes(data) == b"\x00\xff" + MARK_B + b"\x80tail"


@pytest.mark.parametrize("encoder", list(B64_ENCODERS), ids=list(B64_ENCODERS))
@pytest.mark.parametrize("value", [TOKEN, UNICODE])
@pytest.mark.parametrize("before", [b"", b"a", b"ab", b"abc", b"abcd", b"abcde"])
@pytest.mark.parametrize("after", [b"", b"\n", b"yz", b"xyz!"])
def test_base64_of_value_inside_a_longer_stream_leaves_no_character_of_it(
    encoder: str, value: str, before: bytes, after: bytes
) -> None:
    """Each of the three alignments (`before` modulo 3), with or without padding, any
    neighbours: the characters left are exactly those that carry no bit of the value."""
    encoded = B64_ENCODERS[encoder](before + value.encode() + after).decode()
    out = redactor(value).redact(f"<{encoded}>")
    assert out.count(MARK) == 1
    head, tail = out[1:-1].split(MARK)
    # Left before the marker: the characters (6 bits each) wholly inside `before`;
    # after it: those wholly past the value's last bit.
    start, end = 8 * len(before), 8 * (len(before) + len(value.encode()))
    total = -(-(end + 8 * len(after)) // 6)
    assert head == encoded[: start // 6]
    assert tail.rstrip("=") == encoded.rstrip("=")[-(-end // 6) : total]


@pytest.mark.parametrize("before", [b"", b"a", b"ab"])
def test_base64_in_bytes_is_replaced(before: bytes) -> None:
    data = b"x " + base64.b64encode(before + TOKEN.encode()) + b" y"
    out = redactor().redact_bytes(data)
    assert MARK_B in out and base64.b64encode(TOKEN.encode())[4:-4] not in out


def test_base64_wrapped_across_lines_is_replaced() -> None:
    """`base64` wraps its output at 76 columns; a long value crosses the break."""
    value = "sk-live-" + "0123456789abcdefghij" * 4
    wrapped = base64.encodebytes(value.encode()).decode()  # 76-column lines
    assert "\n" in wrapped.strip()
    assert redactor(value).redact(wrapped).strip() == MARK
    crlf = wrapped.replace("\n", "\r\n")
    assert redactor(value).redact(crlf).strip() == MARK


def test_base64_in_a_url_with_percent_encoded_characters_is_replaced() -> None:
    encoded = base64.b64encode(UNICODE.encode()).decode()
    assert b64_chars(encoded) & {"+", "/"}, "the test needs + or / in the encoding"
    url = "https://example.test/?q=" + urllib.parse.quote(encoded, safe="")
    assert redactor(UNICODE).redact(url) == "https://example.test/?q=" + MARK


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: urllib.parse.quote(v, safe=""),
        lambda v: urllib.parse.quote(v),
        urllib.parse.quote_plus,
        lambda v: re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), urllib.parse.quote(v)),
    ],
    ids=["quote-safe-none", "quote", "quote_plus", "lowercase-hex"],
)
@pytest.mark.parametrize("value", [TOKEN, UNICODE])
def test_percent_encoded_value_is_replaced(encode: object, value: str) -> None:
    assert callable(encode)
    encoded = encode(value)
    assert encoded != value
    assert redactor(value).redact(f"/path?token={encoded}&x=1") == f"/path?token={MARK}&x=1"


@pytest.mark.parametrize("value", [TOKEN, UNICODE])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_escaped_value_is_replaced(value: str, ensure_ascii: bool) -> None:
    document = json.dumps({"key": value, "n": 1}, ensure_ascii=ensure_ascii)
    out = redactor(value).redact(document)
    assert json.loads(out) == {"key": MARK, "n": 1}


def test_json_escaped_slash_and_surrogate_pairs_are_replaced() -> None:
    escaped = UNICODE.replace("/", "\\/")
    document = json.dumps(escaped, ensure_ascii=True)[1:-1].replace("\\\\/", "\\/")
    assert "\\ud83d\\ude00" in document and "\\/" in document
    assert redactor(UNICODE).redact(document) == MARK


@pytest.mark.parametrize("value", [TOKEN, UNICODE])
@pytest.mark.parametrize(
    "encode",
    [
        lambda b: b.hex(),
        lambda b: b.hex().upper(),
        lambda b: b.hex(" "),
        lambda b: b.hex(":").upper(),
        lambda b: "".join(f"\\x{x:02x}" for x in b),
        lambda b: binascii.hexlify(b, "\n", 4).decode(),
        # `od -An -tx1`: 16 bytes a line, each line indented by a space
        lambda b: "\n ".join(b[i : i + 16].hex(" ") for i in range(0, len(b), 16)),
    ],
    ids=["lower", "upper", "spaced", "colons-upper", "backslash-x", "wrapped", "od-An-tx1"],
)
def test_hex_of_value_is_replaced(value: str, encode: object) -> None:
    assert callable(encode)
    encoded = encode(value.encode())
    assert redactor(value).redact(f"hex: {encoded} ok") == f"hex: {MARK} ok"
    assert redactor(value).redact_bytes(f"{encoded}\n".encode()) == MARK_B + b"\n"


def test_hex_of_value_followed_by_a_newline_byte_keeps_the_newline_byte() -> None:
    """`echo $TOKEN | xxd -p`: the value's bytes, then `0a`."""
    out = redactor().redact((TOKEN + "\n").encode().hex())
    assert out == MARK + "0a"


def test_longest_value_wins_and_each_keeps_its_own_name() -> None:
    short, long = "abcd1234", "abcd1234-and-more"
    r = Redactor({"SHORT": short, "LONG": long})
    assert r.redact(f"{long} {short}") == "[REDACTED:LONG] [REDACTED:SHORT]"
    assert r.redact(base64.b64encode(long.encode()).decode()) == "[REDACTED:LONG]"


def test_value_stored_with_surrounding_whitespace_is_also_redacted_without_it() -> None:
    r = Redactor({NAME: TOKEN + "\n"})
    assert r.redact(f"[{TOKEN}]") == f"[{MARK}]"


def test_values_shorter_than_four_characters_are_refused_without_showing_them() -> None:
    with pytest.raises(UnredactableValue) as info:
        Redactor({"PIN": "x9z"})
    assert "x9z" not in str(info.value) and "PIN" in str(info.value)


def test_empty_redactor_changes_nothing_and_is_false() -> None:
    r = Redactor()
    assert not r and r.redact(TOKEN) == TOKEN and r.redact_bytes(b"\xff") == b"\xff"


def test_repr_names_the_secrets_but_never_a_value() -> None:
    r = redactor()
    assert TOKEN not in repr(r) and NAME in repr(r)


def test_text_without_a_value_is_unchanged() -> None:
    text = "plain output\nwith base64 aGVsbG8gd29ybGQ= and hex 68656c6c6f and %41%42"
    assert redactor().redact(text) == text
    assert not redactor().found(text)


def test_merged_redacts_the_values_of_both() -> None:
    merged = Redactor({"A": "alpha-value"}).merged(Redactor({"B": "bravo-value"}))
    assert merged.redact("alpha-value bravo-value") == "[REDACTED:A] [REDACTED:B]"
    assert merged.names == {"A", "B"}


def test_two_versions_of_one_name_are_both_redacted() -> None:
    r = Redactor([(NAME, "old-value-1"), (NAME, "new-value-2")])
    assert r.redact("old-value-1 new-value-2") == f"{MARK} {MARK}"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_stream_redacts_a_value_split_across_fragments(size: int) -> None:
    encoded = base64.b64encode(b"xy" + TOKEN.encode()).decode()
    text = f"say {TOKEN} and {encoded} and {TOKEN.encode().hex()} done"
    stream = redactor().stream()
    pieces = [stream.feed(text[i : i + size]) for i in range(0, len(text), size)]
    out = "".join(pieces) + stream.flush()
    assert out == redactor().redact(text)
    assert TOKEN not in out and out.count(MARK) == 3


def test_stream_holds_back_no_more_than_a_match_can_span() -> None:
    r = redactor()
    stream = r.stream()
    text = "x" * (r.max_match_chars + 100)
    assert stream.feed(text) == "x" * 101
    assert stream.flush() == "x" * (r.max_match_chars - 1)


def test_stream_of_an_empty_redactor_passes_fragments_through() -> None:
    stream = Redactor().stream()
    assert stream.feed(TOKEN) == TOKEN and stream.flush() == ""


# ----------------------------------------------------------------- a head cut from the whole


@pytest.mark.parametrize("inside", [1, 10, len(TOKEN) - 1])
def test_a_head_that_would_cut_a_value_in_two_ends_with_its_marker(inside: int) -> None:
    """The first `head` bytes of a command's output: a value the cut would split is
    replaced whole (cut first and redacted after, its first part would show)."""
    r = redactor()
    data = b"x" * 50 + TOKEN.encode() + b" tail"
    head = 50 + inside
    assert TOKEN.encode()[:inside] in data[:head]  # what a plain cut would show
    assert r.redact_head(data, head) == b"x" * 50 + MARK_B
    assert r.redact_head(data, 50) == b"x" * 50  # a value starting at the cut is not shown
    encoded = b"y" + base64.b64encode(TOKEN.encode()) + b"\n"
    assert r.redact_head(encoded, 10) == b"y" + MARK_B


def test_a_head_keeps_the_values_before_it_redacted_and_its_own_text() -> None:
    r = redactor()
    data = f"a {TOKEN} b {TOKEN} c".encode()
    whole = r.redact_bytes(data)
    assert r.redact_head(data, len(data)) == whole
    assert r.redact_head(data, 4 + len(TOKEN)) == b"a " + MARK_B + b" b"
    assert Redactor().redact_head(data, 5) == data[:5]
    with pytest.raises(TypeError):
        Redactor.chain([r, redactor(UNICODE)]).redact_head(data, 5)


# ----------------------------------------------------------------- logging


@pytest.fixture
def captured() -> logging.Logger:
    logger = logging.getLogger("tests.redaction")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def _handler(logger: logging.Logger) -> tuple[logging.Handler, io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return handler, buffer


def test_log_filter_redacts_message_arguments_and_exception(captured: logging.Logger) -> None:
    handler, buffer = _handler(captured)
    redacting = install_log_redaction(redactor, captured)
    try:
        captured.info("token %s in %r", TOKEN, {"b64": base64.b64encode(TOKEN.encode())})
        captured.info(f"f-string {TOKEN.encode().hex()}")
        try:
            raise RuntimeError(f"failed with {TOKEN}")
        except RuntimeError:
            captured.exception("boom %s", urllib.parse.quote(TOKEN, safe=""))
        captured.info("stack", stack_info=True)
    finally:
        remove_log_redaction(redacting, captured)
        captured.removeHandler(handler)
    written = buffer.getvalue()
    assert TOKEN not in written
    assert base64.b64encode(TOKEN.encode()).decode()[4:-4] not in written
    assert TOKEN.encode().hex() not in written
    assert written.count(MARK) == 5  # info args (2), f-string, exception message + text
    assert "RuntimeError: failed with " + MARK in written


def test_log_filter_on_a_handler_redacts_records_propagated_from_children() -> None:
    parent = logging.getLogger("tests.redaction.parent")
    parent.propagate = False
    parent.setLevel(logging.INFO)
    handler, buffer = _handler(parent)
    redacting = install_log_redaction(redactor, parent)
    try:
        logging.getLogger("tests.redaction.parent.child").warning("child says %s", TOKEN)
    finally:
        remove_log_redaction(redacting, parent)
        parent.removeHandler(handler)
    assert buffer.getvalue() == f"WARNING child says {MARK}\n"


def test_log_filter_follows_its_source_as_it_changes(captured: logging.Logger) -> None:
    handler, buffer = _handler(captured)
    current = [Redactor()]
    handler.addFilter(RedactingFilter(lambda: current[0]))
    try:
        captured.info("one %s", TOKEN)
        current[0] = redactor()
        captured.info("two %s", TOKEN)
    finally:
        captured.removeHandler(handler)
    assert buffer.getvalue() == f"INFO one {TOKEN}\nINFO two {MARK}\n"


def test_chain_applies_each_redactor_and_cannot_stream() -> None:
    chained = Redactor.chain(
        [Redactor({"A": "alpha-value"}), Redactor(), Redactor({"B": "bravo-v"})]
    )
    assert chained.redact("alpha-value bravo-v") == "[REDACTED:A] [REDACTED:B]"
    assert chained.redact_bytes(b"bravo-v") == b"[REDACTED:B]"
    assert chained.found("x alpha-value") and not chained.found("nothing")
    assert chained.names == {"A", "B"}
    with pytest.raises(TypeError):
        chained.stream()
    assert not Redactor.chain([])
