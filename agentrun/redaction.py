"""Redaction of granted secret values, and of their common encodings, from text and bytes.

A run granted secrets may see them only where the egress broker or an exec's
environment puts them; whatever a tool prints, a file it writes, an error or a
model's reply is scanned before it leaves an activity, and each occurrence of a
value becomes ``[REDACTED:<name>]``:

    redactor = Redactor({"GITHUB_TOKEN": token})
    redactor.redact(f"token={token}")                 # 'token=[REDACTED:GITHUB_TOKEN]'
    redactor.redact_bytes(base64.b64encode(token.encode()))  # b'[REDACTED:GITHUB_TOKEN]'

Forms recognised, for each value (its UTF-8 bytes where an encoding needs bytes):

* **plain text**, with any of the characters an encoder escapes (all but letters,
  digits and ``-._~``) **percent-encoded** (``quote``, ``quote_plus``'s ``+`` for a
  space, upper- or lower-case hex) or **JSON-escaped** (``\\"``, ``\\\\``,
  ``\\/``, ``\\n``…, ``\\uXXXX`` and surrogate pairs);
* **hex**, lower, upper or mixed case, optionally with ``\\x``/``0x`` before each
  byte and spaces, a colon or a line break between bytes (``xxd -p``, ``od -An
  -tx1``); not a dump with offsets or a character column (``xxd``, ``hexdump -C``,
  ``od -c``), whose character column shows the value in pieces;
* **base64**, standard and URL-safe alphabets, with or without ``=`` padding,
  wrapped across lines (``base64`` wraps at 76 columns), ``+ / =`` possibly
  percent-encoded, and **at each of the three alignments** a value can have inside
  a longer base64 stream (``echo "x$TOKEN" | base64``): the characters that carry
  only bits of the value must match exactly, and the one at each edge that mixes the
  value's bits with a neighbour's is matched by the set of characters agreeing with
  the value's bits, so no character that carries a bit of the value survives.

Design (why it looks like this):

* **One regular expression for all values**, one named group per value, the longest
  values first: a value that contains another is replaced whole, under its own name.
* **Values shorter than** :data:`MIN_VALUE_CHARS` **are refused**
  (:class:`UnredactableValue`): they would match ordinary text everywhere (the
  secret store refuses values shorter than 8 characters for the same reason). A
  value with surrounding white space is also redacted without it (a value stored
  with the newline `echo` added is printed without one).
* **Compiled once, on first use**: preparing the pattern takes about a millisecond
  per character of the values (seconds for a PEM key), scanning about half a second
  per MB; callers keep redactors (`activities.secret_values` caches them), and
  :meth:`Redactor.chain` combines many without compiling again.
* **Streams** (a model's reply arriving in fragments) go through
  :meth:`Redactor.stream`, which holds back the last characters that could still
  begin a match, so a value split across two fragments is still replaced.
* :class:`RedactingFilter` redacts log records (the message with its arguments
  merged, the formatted exception and stack) with whatever redactor its source
  returns at that moment: the worker's source is the values of the runs it serves.

Output shown in part (a command's first kilobytes) is cut with
:meth:`Redactor.redact_head`, which replaces a value the cut would split whole.

What it cannot do: a value printed in pieces (``${TOKEN:0:4}``), transformed
(reversed, encrypted, re-encoded twice) or cut off where no more of the text is
at hand is not recognised. The defence against those is that a value reaches the sandbox only
through the egress broker or the one exec granted it.

This module must not: do I/O, log, or let a value appear in a ``repr`` or message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

MIN_VALUE_CHARS = 4
"""Shortest value a :class:`Redactor` accepts (the secret store's floor is higher)."""

MARKER = "[REDACTED:{name}]"

_B64_STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_PERCENT_ALTERNATIVES = {"+": "%2[bB]", "/": "%2[fF]", "=": "%3[dD]"}
"""Base64 characters a URL may carry percent-encoded (`+` is a space in a query)."""
_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f"} | {
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_LINE_BREAK = r"(?:\r?\n)?"
_HEX_SEPARATOR = r"[ \t:]{0,3}(?:\r?\n[ \t]{0,3})?"
"""Between two bytes of hex: `73 65`, `73:65`, and the line break (with the indent)
of a wrapped dump such as `od -An -tx1` (`…2d\n 30…`)."""


class UnredactableValue(ValueError):
    """A value too short to be redacted without mangling ordinary text."""


@dataclass(frozen=True)
class _Piece:
    """A fragment of a pattern, for str and for bytes, and the most it can match."""

    text: str
    binary: str
    """The same pattern with non-ASCII literals as UTF-8 byte escapes (`\\xe2…`)."""
    max_chars: int


def _join(pieces: Iterable[_Piece], between: _Piece | None = None) -> _Piece:
    items = list(pieces)
    if between is not None:
        spaced: list[_Piece] = []
        for i, piece in enumerate(items):
            if i:
                spaced.append(between)
            spaced.append(piece)
        items = spaced
    return _Piece(
        "".join(p.text for p in items),
        "".join(p.binary for p in items),
        sum(p.max_chars for p in items),
    )


def _either(options: Iterable[_Piece]) -> _Piece:
    unique = list({p.text: p for p in options}.values())
    if len(unique) == 1:
        return unique[0]
    return _Piece(
        "(?:" + "|".join(p.text for p in unique) + ")",
        "(?:" + "|".join(p.binary for p in unique) + ")",
        max(p.max_chars for p in unique),
    )


def _ascii(pattern: str, max_chars: int) -> _Piece:
    return _Piece(pattern, pattern, max_chars)


def _hex_digits(value: int, width: int) -> str:
    """`value` in hex as a pattern accepting either case: 0x2f -> `2[fF]`."""
    return "".join(c if c.isdigit() else f"[{c}{c.upper()}]" for c in format(value, f"0{width}x"))


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
"""Characters no URL encoder and no JSON encoder escapes: matched as themselves only,
which keeps the pattern of a long alphanumeric token short (fast to compile and scan)."""


def _char(c: str) -> _Piece:
    """One character of the value: itself, percent-encoded, or JSON-escaped."""
    if c in _UNRESERVED:
        return _ascii(re.escape(c), 1)
    data = c.encode()
    if c.isascii():
        literal = _ascii(re.escape(c), 1)
    else:
        literal = _Piece(re.escape(c), "".join(f"\\x{b:02x}" for b in data), len(data))
    options = [literal, _ascii("".join("%" + _hex_digits(b, 2) for b in data), 3 * len(data))]
    if c == " ":
        options.append(_ascii(r"\+", 1))
    if c in _JSON_SHORT:
        options.append(_ascii(re.escape(_JSON_SHORT[c]), 2))
    code = ord(c)
    if code > 0xFFFF:
        high = 0xD800 + ((code - 0x10000) >> 10)
        low = 0xDC00 + ((code - 0x10000) & 0x3FF)
        options.append(_ascii(rf"\\u{_hex_digits(high, 4)}\\u{_hex_digits(low, 4)}", 12))
    else:
        options.append(_ascii(rf"\\u{_hex_digits(code, 4)}", 6))
    return _either(options)


def _text_pattern(value: str) -> _Piece:
    return _join(_char(c) for c in value)


def _hex_pattern(data: bytes) -> _Piece:
    byte = [_ascii(r"(?:\\x|0x)?" + _hex_digits(b, 2), 6) for b in data]
    return _join(byte, _ascii(_HEX_SEPARATOR, 8))


def _b64_char(chars: set[str]) -> _Piece:
    """A pattern for one base64 character out of `chars` (one, or an edge's set)."""
    plain = sorted(chars)
    encoded = sorted(_PERCENT_ALTERNATIVES[c] for c in chars if c in _PERCENT_ALTERNATIVES)
    if len(plain) == 1:
        options = [re.escape(plain[0]), *encoded]
    else:
        options = ["[" + "".join(re.escape(c) for c in plain) + "]", *encoded]
    pattern = options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"
    return _ascii(pattern, 3)


def _b64_pattern(data: bytes, offset: int, alphabet: str) -> _Piece:
    """The base64 of `data` when it starts `offset` (0, 1 or 2) bytes into a group of 3.

    Each output character carries 6 bits; those wholly inside `data` must be exactly
    the value's character, and the first and last may mix in a neighbour's bits: they
    match any character whose bits agree with the value's part.
    """
    bits = "".join(f"{b:08b}" for b in data)
    start, end = 8 * offset, 8 * offset + len(bits)
    pieces: list[_Piece] = []
    edges: list[bool] = []
    for j in range(start // 6, -(-end // 6)):
        known = {k: bits[6 * j + k - start] for k in range(6) if start <= 6 * j + k < end}
        if len(known) == 6:
            chars = {alphabet[int(bits[6 * j - start : 6 * j - start + 6], 2)]}
        else:  # an edge: every character whose bits agree with the value's
            chars = {
                alphabet[x]
                for x in range(64)
                if all(format(x, "06b")[k] == bit for k, bit in known.items())
            }
        pieces.append(_b64_char(chars))
        edges.append(len(known) < 6)
    if edges[0]:
        first = pieces[0]
        pieces[0] = _ascii(f"(?:{first.text})?", first.max_chars)
    last_is_edge = edges[-1]
    if last_is_edge:
        last = pieces[-1]
        pieces[-1] = _ascii(f"(?:{last.text})?", last.max_chars)
    body = _join(pieces, _ascii(_LINE_BREAK, 2))
    if last_is_edge:  # the stream may end here: padding follows a partial group
        body = _join([body, _ascii("(?:=|%3[dD]){0,2}", 6)])
    return body


def _value_pattern(value: str) -> _Piece:
    """Every recognised form of one value, the longest forms first."""
    data = value.encode()
    forms = [_hex_pattern(data)]
    forms += [
        _b64_pattern(data, offset, alphabet)
        for alphabet in (_B64_STD, _B64_URL)
        for offset in range(3)
    ]
    forms.append(_text_pattern(value))
    return _either(forms)


class Redactor:
    """Replaces granted values, in every recognised form, by ``[REDACTED:<name>]``.

    `values` maps a secret's name to its value (or gives `(name, value)` pairs, so a
    name may have several values: the versions a run has seen). Empty: redacts
    nothing. Immutable; combine with :meth:`merged`. Its `repr` names the secrets
    only.
    """

    def __init__(self, values: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = values.items() if isinstance(values, Mapping) else values
        found: dict[tuple[str, str], None] = {}
        for name, value in pairs:
            if len(value) < MIN_VALUE_CHARS:
                raise UnredactableValue(
                    f"the value of secret {name!r} is shorter than {MIN_VALUE_CHARS} "
                    "characters: it cannot be redacted reliably; store a longer one"
                )
            found[(name, value)] = None
            stripped = value.strip()
            if stripped != value and len(stripped) >= MIN_VALUE_CHARS:
                found[(name, stripped)] = None
        # Longest first: a value containing another one is replaced whole, under its name.
        self._pairs = sorted(found, key=lambda p: (-len(p[1].encode()), p[0], p[1]))
        self.names = frozenset(name for name, _ in self._pairs)
        """The names of the secrets redacted (never their values)."""
        self._forms = [_value_pattern(value) for _, value in self._pairs]
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self._chain: tuple[Redactor, ...] = ()
        self.max_match_chars = max((p.max_chars for p in self._forms), default=0)
        """The longest text a single match can span (what a stream holds back)."""

    @classmethod
    def chain(cls, redactors: Iterable[Redactor]) -> Redactor:
        """One redactor applying each of `redactors` in turn, compiling nothing again.

        For many values that change often (a worker's logs cover every run's): unlike
        :meth:`merged`, a value that contains another one's may be replaced in part
        under the other's name. Cannot :meth:`stream`.
        """
        parts = tuple(r for r in redactors if r)
        if len(parts) == 1:
            return parts[0]
        chained = cls()
        chained._chain = parts
        chained.names = frozenset().union(*(p.names for p in parts))
        return chained

    def _text_pattern(self) -> re.Pattern[str] | None:
        # Compiled on first use (compiling takes about a millisecond per character of
        # the values); a race compiles twice, harmlessly.
        if self._text is None and self._forms:
            alternatives = (f"(?P<v{i}>{p.text})" for i, p in enumerate(self._forms))
            self._text = re.compile("|".join(alternatives))
        return self._text

    def _bytes_pattern(self) -> re.Pattern[bytes] | None:
        if self._bytes is None and self._forms:
            alternatives = (f"(?P<v{i}>{p.binary})" for i, p in enumerate(self._forms))
            self._bytes = re.compile("|".join(alternatives).encode("ascii"))
        return self._bytes

    def __bool__(self) -> bool:
        return bool(self._pairs or self._chain)

    def __repr__(self) -> str:
        return f"Redactor(names={sorted(self.names)})"

    def _name(self, match: re.Match[str] | re.Match[bytes]) -> str:
        group = match.lastgroup
        assert group is not None  # every alternative is a named group
        return self._pairs[int(group[1:])][0]

    def redact(self, text: str) -> str:
        """`text` with every recognised form of every value replaced."""
        for part in self._chain:
            text = part.redact(text)
        pattern = self._text_pattern()
        if pattern is None:
            return text
        return pattern.sub(lambda m: MARKER.format(name=self._name(m)), text)

    def redact_bytes(self, data: bytes) -> bytes:
        """`data` (any bytes: output, a file) with every recognised form replaced."""
        for part in self._chain:
            data = part.redact_bytes(data)
        pattern = self._bytes_pattern()
        if pattern is None:
            return data
        return pattern.sub(lambda m: MARKER.format(name=self._name(m)).encode(), data)

    def redact_head(self, data: bytes, head: int) -> bytes:
        """The first `head` bytes of `data`, redacted as a part of the whole: a value
        that begins before the cut and ends after it is replaced whole, never cut in
        two (its first part would no longer be recognised).

        `data` must be whole, or reach at least :attr:`max_match_chars` bytes past
        `head` (a match that begins before the cut ends within that). The result may
        be longer than `head` by a marker, or shorter (a marker shorter than a value).
        """
        if self._chain:
            raise TypeError("a chained redactor cannot cut; merge the values")
        pattern = self._bytes_pattern()
        if pattern is None:
            return data[:head]
        out: list[bytes] = []
        cut = 0
        for match in pattern.finditer(data):
            if match.start() >= head:
                break
            out += [data[cut : match.start()], MARKER.format(name=self._name(match)).encode()]
            cut = match.end()
        if cut < head:
            out.append(data[cut:head])
        return b"".join(out)

    def found(self, text: str) -> bool:
        """Whether `text` holds any recognised form of a value."""
        if any(part.found(text) for part in self._chain):
            return True
        pattern = self._text_pattern()
        return pattern is not None and pattern.search(text) is not None

    def merged(self, *others: Redactor) -> Redactor:
        """A redactor for this one's values and the others' (not of chained ones)."""
        pairs = list(self._pairs)
        for other in others:
            pairs += other._pairs
        return Redactor(pairs)

    def stream(self) -> StreamRedactor:
        """A redactor for text that arrives in fragments (see :class:`StreamRedactor`)."""
        if self._chain:
            raise TypeError("a chained redactor cannot redact a stream; merge the values")
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a text that arrives in fragments, holding back what could begin a match.

    ``feed`` returns the redacted text that can no longer change; ``flush`` returns
    the rest, at the end. Concatenated, the outputs equal ``redact`` of the whole.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""

    def feed(self, fragment: str) -> str:
        pattern = self._redactor._text_pattern()
        if pattern is None:
            return fragment
        self._pending += fragment
        # A match starting before `safe` is complete: at most `max_match_chars` long,
        # it ends inside what is pending, so no later fragment can change it.
        safe = len(self._pending) - self._redactor.max_match_chars + 1
        if safe <= 0:
            return ""
        out: list[str] = []
        cut = 0
        for match in pattern.finditer(self._pending):
            if match.start() >= safe:
                break
            out.append(self._pending[cut : match.start()])
            out.append(MARKER.format(name=self._redactor._name(match)))
            cut = match.end()
        if cut < safe:
            out.append(self._pending[cut:safe])
            cut = safe
        self._pending = self._pending[cut:]
        return "".join(out)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return self._redactor.redact(rest)


class RedactingFilter(logging.Filter):
    """Redacts each log record with the redactor `source` returns when it is logged.

    Install it on the handlers that write records out (:func:`install_log_redaction`):
    a filter on a logger does not see the records its children propagate to it.
    The record's message is merged with its arguments and redacted, as are the
    formatted exception and stack; a record is never dropped.
    """

    def __init__(self, source: Callable[[], Redactor]) -> None:
        super().__init__()
        self._source = source

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self._source()
        if not redactor:
            return True
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: show both, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg = redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact(record.stack_info)
        return True


def install_log_redaction(
    source: Callable[[], Redactor], logger: logging.Logger | None = None
) -> RedactingFilter:
    """Add a :class:`RedactingFilter` to `logger` (default: the root) and its handlers.

    Records of child loggers reach the root's handlers, so every record the process
    writes through them is redacted. Handlers added later need the filter too
    (``handler.addFilter(filter)``); :func:`remove_log_redaction` undoes this.
    """
    target = logger or logging.getLogger()
    redacting = RedactingFilter(source)
    target.addFilter(redacting)
    for handler in target.handlers:
        handler.addFilter(redacting)
    return redacting


def remove_log_redaction(redacting: RedactingFilter, logger: logging.Logger | None = None) -> None:
    target = logger or logging.getLogger()
    target.removeFilter(redacting)
    for handler in target.handlers:
        handler.removeFilter(redacting)
