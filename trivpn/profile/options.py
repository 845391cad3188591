"""OpenVPN option-line syntax: tokenizer and line/inline-block iterator.

Theory of operation
-------------------
OpenVPN reads a config one line at a time and splits each line with a small state
machine (``parse_line`` in OpenVPN's options.c).  We reproduce its rules so that a
profile means the same thing to us as to ``openvpn --config``:

* tokens are separated by whitespace; a token that *starts* with ``#`` or ``;``
  starts a comment that runs to the end of the line (so ``remote x # note`` works);
* ``"..."`` quotes a token; inside it a backslash escapes ``\\``, ``"`` or whitespace;
* ``'...'`` quotes a token literally (no escapes at all);
* outside single quotes a backslash may only escape ``\\``, ``"`` or whitespace,
  anything else is an error (OpenVPN refuses such lines, typically Windows paths);
* a closing quote ends the token even if no whitespace follows;
* ``--name`` is accepted for ``name``, as on the command line.

Inline files: a line whose *only* token is ``<tag>`` opens a block that ends at the
first line starting (after leading whitespace) with ``</tag>``.  The block's lines,
each with its newline, form the body.  :func:`iter_options` yields such a block as
``["<tag>", body]``: the angle brackets stay on the name so the consumer can tell
inline data from a file name.  This is unambiguous because any *other* line whose
first token starts with ``<`` is rejected.

Line numbers are 1-based; an inline block is reported at the line of its ``<tag>``.
"""

from __future__ import annotations

from collections.abc import Iterator

from trivpn.errors import ConfigError

__all__ = [
    "MAX_PARMS",
    "OPTION_PARM_SIZE",
    "is_inline",
    "iter_options",
    "tokenize_line",
]

#: Longest single parameter OpenVPN accepts (``OPTION_PARM_SIZE``).
OPTION_PARM_SIZE = 256
#: Most tokens (option name included) OpenVPN keeps from one line (``MAX_PARMS``).
#: OpenVPN silently drops the rest; we refuse the line instead of guessing.
MAX_PARMS = 16

# isspace() in the C locale; NUL is our end-of-line sentinel, as in OpenVPN.
_SPACE = frozenset(" \t\n\v\f\r\0")
_COMMENT = frozenset("#;")
_ESCAPABLE = frozenset('\\"') | _SPACE

_INITIAL = 0
_QUOTED = 1
_UNQUOTED = 2
_SQUOTED = 3


def tokenize_line(line: str) -> list[str]:
    """Split one option line into tokens exactly as OpenVPN's ``parse_line`` does.

    Raises :class:`ConfigError` (one line, no line number: the caller adds it) on
    unbalanced quotes, bad backslash use, over-long parameters or too many of them.
    """
    if "\0" in line:
        raise ConfigError("line contains a NUL character")
    tokens: list[str] = []
    parm: list[str] = []
    state = _INITIAL
    backslash = False
    for ch in line + "\0":
        out: str | None = None
        if not backslash and ch == "\\" and state != _SQUOTED:
            backslash = True
            continue
        done = False
        if state == _INITIAL:
            if ch not in _SPACE:
                if ch in _COMMENT:
                    break
                if not backslash and ch == '"':
                    state = _QUOTED
                elif not backslash and ch == "'":
                    state = _SQUOTED
                else:
                    out = ch
                    state = _UNQUOTED
        elif state == _UNQUOTED:
            if not backslash and ch in _SPACE:
                done = True
            else:
                out = ch
        elif state == _QUOTED:
            if not backslash and ch == '"':
                done = True
            else:
                out = ch
        else:  # _SQUOTED
            if ch == "'":
                done = True
            else:
                out = ch
        if done:
            tokens.append("".join(parm))
            parm.clear()
            state = _INITIAL
            if len(tokens) > MAX_PARMS:
                raise ConfigError(f"more than {MAX_PARMS} parameters on one line")
        if out == "\0":
            out = None
        if backslash and out is not None and out not in _ESCAPABLE:
            raise ConfigError(
                'bad backslash: only \\\\, \\" and escaped spaces are allowed '
                '(write Windows paths as "c:\\\\dir\\\\file")'
            )
        backslash = False
        if out is not None:
            if len(parm) >= OPTION_PARM_SIZE:
                raise ConfigError(f"parameter longer than {OPTION_PARM_SIZE} characters")
            parm.append(out)
    if state == _QUOTED:
        raise ConfigError('no closing quotation (")')
    if state == _SQUOTED:
        raise ConfigError("no closing single quotation (')")
    if state != _INITIAL:
        raise ConfigError("line ends with a lone backslash")
    return tokens


def is_inline(tokens: list[str]) -> bool:
    """True if ``tokens`` is an inline block as yielded by :func:`iter_options`."""
    return len(tokens) == 2 and tokens[0].startswith("<") and tokens[0].endswith(">")


def iter_options(text: str, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, tokens)`` for every option in ``text``.

    Blank and comment lines are skipped, a leading ``--`` is removed from the name,
    and an inline block ``<tag>…</tag>`` is yielded once as ``["<tag>", body]``
    where ``body`` keeps every inner line with a trailing ``"\\n"``.  Errors are
    :class:`ConfigError` with a message starting ``line N:``; ``text`` starts at line
    ``first_line`` (the body of an inline block is numbered from the line after its tag).
    """
    return _iter_options(text, first_line)


def _iter_options(text: str, first_line: int) -> Iterator[tuple[int, list[str]]]:
    """Worker for :func:`iter_options`; ``first_line`` numbers nested blocks."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        lineno = first_line + i
        try:
            tokens = tokenize_line(lines[i])
        except ConfigError as exc:
            raise ConfigError(f"line {lineno}: {exc}") from None
        i += 1
        if not tokens:
            continue
        name = tokens[0]
        if len(name) >= 3 and name.startswith("--"):
            name = name[2:]
            tokens[0] = name
        if not name.startswith("<"):
            yield lineno, tokens
            continue
        if len(tokens) != 1 or len(name) < 3 or not name.endswith(">") or name[1] == "/":
            raise ConfigError(
                f"line {lineno}: misplaced or malformed inline tag {name!r} "
                "(a tag like <ca> must be alone on its line and closed by </ca>)"
            )
        close_tag = f"</{name[1:-1]}>"
        body: list[str] = []
        while True:
            if i >= len(lines):
                raise ConfigError(f"line {lineno}: inline block {name} is missing {close_tag}")
            raw = lines[i]
            i += 1
            if raw.lstrip().startswith(close_tag):
                break
            body.append(raw.removesuffix("\r") + "\n")
        yield lineno, [name, "".join(body)]
