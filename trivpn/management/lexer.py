"""Split one management command line into parameters the way OpenVPN's option lexer does.

Why a lexer of our own: tools quote arguments (`username "Auth" "a b"`, `password 'Auth'
"x\\"y"`) and the daemon must read them exactly as OpenVPN would. Facts, observed on Debian's
openvpn 2.6.14 and summarised here (no code was copied):

- parameters are separated by spaces/tabs; a line whose first parameter would start with
  `#` or `;` is a comment and yields nothing (a `;` inside a word is an ordinary character);
- `"…"` groups a parameter; inside it and in bare words a backslash makes the next character
  literal (`\\"` is a quote, `\\\\` a backslash);
- `'…'` groups a parameter with no escapes at all;
- a parameter longer than 255 characters is refused; parameters beyond the 16th are ignored.
"""

from __future__ import annotations

#: OpenVPN's option parameter buffer is 256 bytes including the terminator
MAX_PARAM_CHARS = 255
#: OpenVPN's MAX_PARMS: further parameters are dropped silently (observed: `pid a b … s` works)
MAX_PARAMS = 16
#: the source name OpenVPN puts in lexer errors for management input (observed "TCP:0")
_SOURCE = "TCP:0"


class LexError(ValueError):
    """A line the lexer refuses; `str(err)` is the text after `ERROR: ` in the reply."""


def split_line(line: str) -> list[str]:
    """Return the parameters of `line` (no trailing CR/LF), raising LexError when malformed."""
    params: list[str] = []
    current: list[str] = []
    in_word = False
    quote = ""  # "", '"' or "'"
    escaped = False
    for ch in line:
        if escaped:
            current.append(ch)
            escaped = False
        elif quote == "'":
            if ch == "'":
                quote = ""
            else:
                current.append(ch)
        elif ch == "\\":
            escaped = True
            in_word = True
        elif quote == '"':
            if ch == '"':
                quote = ""
            else:
                current.append(ch)
        elif ch in " \t":
            if in_word:
                _finish(params, current)
                current = []
                in_word = False
        elif not in_word and not params and ch in "#;":
            return []
        elif ch in "\"'":
            quote = ch
            in_word = True
        else:
            current.append(ch)
            in_word = True
        if len(current) > MAX_PARAM_CHARS:
            text = "".join(current[:MAX_PARAM_CHARS])
            raise LexError(
                f"Options error: Parameter at {_SOURCE} is too long "
                f"({MAX_PARAM_CHARS + 1} chars max): {text}"
            )
    if quote == '"':
        raise LexError(f'Options error: No closing quotation (") in {_SOURCE}')
    if quote == "'":
        raise LexError(f"Options error: No closing single quotation (') in {_SOURCE}")
    if escaped:
        raise LexError(f"Options error: Residual parse state (backslash) in {_SOURCE}")
    if in_word:
        _finish(params, current)
    return params[:MAX_PARAMS]


def _finish(params: list[str], current: list[str]) -> None:
    params.append("".join(current))
