r"""`--env-file`: the variables a file sets, as Apptainer evaluates it (pure).

The file is shell code, evaluated on the host before the launch with every assignment
exported (`set -a`) and the host's environment readable (`$HOME`, `${X:-default}`); what it
assigns (or exports) is what it sets. Quoting is the shell's: `'...'` literal, `"..."` with
`$` expansion and a backslash escaping `$`, a backslash, `"` and a backquote; outside
quotes, `\$` is a literal `$`. Only assignments and `export` are allowed: commands,
redirections, pipelines and command substitutions are refused (Apptainer's interpreter
disables them), so that reading the file runs nothing. The values are then evaluated once more in the container, with the
user's other values (see runtime.env).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Set by the shell itself: a file can't set them (Apptainer skips them).
READONLY = frozenset({"EUID", "GID", "HOME", "IFS", "OPTIND", "PWD", "UID"})
_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NAME_CHARS = _NAME_START | frozenset("0123456789")
_DIGITS = "0123456789"
_BLANK = " \t"
_OPERATORS = "|&<>()"


class EnvFileError(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def evaluate(text: str, where: str, env: Mapping[str, str], args: Sequence[str] = (),
             assigned: Mapping[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """The variables `text` (the file `where`) sets, in order. `env`: the host's
    environment; `args`: the positional parameters; `assigned`: what earlier files set
    (seen by this one, not returned again unless it sets them too)."""
    from sifbox.util.errors import UsageError

    try:
        return _Evaluator(text, env, args, dict(assigned or {})).run()
    except EnvFileError as err:
        raise UsageError(f"can't read env file `{where}`: {err}",
                         hint="an env file holds assignments (NAME=value, export NAME=value) only") from None  # fmt: skip


class _Evaluator:
    def __init__(self, text: str, env: Mapping[str, str], args: Sequence[str], known: dict[str, str]) -> None:
        self.text, self.env, self.args = text, env, list(args)
        self.vars = known
        self.out: dict[str, str] = {}
        self.pos, self.line = 0, 1

    # -- the file: commands of words ------------------------------------------------------------
    def run(self) -> dict[str, str]:
        while self.pos < len(self.text):
            start = self.line
            words = self._command()
            if words:
                self._execute(words, start)
        return self.out

    def _command(self) -> list[tuple[str, bool, str]]:
        """The words of the next command: (expanded text, is it an assignment, its name)."""
        words: list[tuple[str, bool, str]] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in _BLANK:
                self.pos += 1
            elif ch == "\\" and self.text.startswith("\\\n", self.pos):
                self.pos += 2
                self.line += 1
            elif ch == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
            elif ch in "\n;":
                self.pos += 1
                if ch == "\n":
                    self.line += 1
                if words or ch == "\n":
                    return words
            elif ch in _OPERATORS:
                raise EnvFileError(self.line, f"`{ch}`: only assignments are allowed")
            else:
                words.append(self._word(assignment_ok=not words or words[0][0] == "export"
                                        or all(w[1] for w in words)))  # fmt: skip
        return words

    def _execute(self, words: list[tuple[str, bool, str]], line: int) -> None:
        if words[0] == ("export", False, "") and not words[0][1]:
            for text, is_assign, name in words[1:]:
                if is_assign:
                    self._assign(name, text)
                elif _is_name(text):
                    if text in self.vars:
                        self._assign(text, self.vars[text])
                    elif text in self.env:
                        self._assign(text, self.env[text])
                else:
                    raise EnvFileError(line, f"`export {text}`: not a variable name")
            return
        for text, is_assign, name in words:
            if not is_assign:
                raise EnvFileError(line, f"`{text}`: commands can't run in an env file")
            self._assign(name, text)

    def _assign(self, name: str, value: str) -> None:
        self.vars[name] = value
        if name not in READONLY:
            self.out[name] = value

    # -- words ------------------------------------------------------------------------------------
    def _word(self, assignment_ok: bool) -> tuple[str, bool, str]:
        name = ""
        if assignment_ok:
            end = self.pos
            while end < len(self.text) and self.text[end] in _NAME_CHARS:
                end += 1
            if end < len(self.text) and self.text[end] == "=" and self.text[self.pos] in _NAME_START:
                name = self.text[self.pos : end]
                self.pos = end + 1
        parts: list[str] = []
        first = True
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in _BLANK or ch in "\n;" or ch in _OPERATORS:
                break
            if ch == "~" and first and name:
                parts.append(self._tilde())
            elif ch == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise EnvFileError(self.line, "a single quote is not closed")
                chunk = self.text[self.pos + 1 : end]
                self.line += chunk.count("\n")
                parts.append(chunk)
                self.pos = end + 1
            elif ch == '"':
                parts.append(self._double_quoted())
            elif ch == "\\":
                if self.pos + 1 >= len(self.text):
                    self.pos += 1
                elif self.text[self.pos + 1] == "\n":
                    self.pos += 2
                    self.line += 1
                else:
                    parts.append(self.text[self.pos + 1])
                    self.pos += 2
            elif ch == "$":
                parts.append(self._dollar())
            elif ch == "`":
                raise EnvFileError(self.line, "command substitution (`...`) is not allowed")
            else:
                parts.append(ch)
                self.pos += 1
            first = False
        return "".join(parts), bool(name), name

    def _tilde(self) -> str:
        self.pos += 1
        if self.pos < len(self.text) and self.text[self.pos] not in "/:" + _BLANK + "\n;":
            return "~"
        return self.env.get("HOME", "~")

    def _double_quoted(self) -> str:
        self.pos += 1
        start = self.line
        parts: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise EnvFileError(start, "a double quote is not closed")
            ch = self.text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(parts)
            if ch == "\\" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] in '$`"\\\n':
                if self.text[self.pos + 1] == "\n":
                    self.line += 1
                else:
                    parts.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == "$":
                parts.append(self._dollar())
            elif ch == "`":
                raise EnvFileError(self.line, "command substitution (`...`) is not allowed")
            else:
                if ch == "\n":
                    self.line += 1
                parts.append(ch)
                self.pos += 1

    def _dollar(self) -> str:
        text, i = self.text, self.pos + 1
        nxt = text[i] if i < len(text) else ""
        if nxt == "(":
            raise EnvFileError(self.line, "command substitution ($(...)) is not allowed")
        if nxt == "{":
            return self._braced()
        if nxt in _NAME_START:
            end = i
            while end < len(text) and text[end] in _NAME_CHARS:
                end += 1
            self.pos = end
            return self._value(text[i:end]) or ""
        if nxt and nxt in "$!-":
            raise EnvFileError(self.line, f"`${nxt}` is not supported")
        if nxt and nxt in _DIGITS + "#@*?":
            self.pos = i + 1
            return self._value(nxt) or ""
        self.pos = i
        return "$"

    def _braced(self) -> str:
        text = self.text
        i = self.pos + 2
        length = i < len(text) and text[i] == "#"
        if length:
            i += 1
        end = i
        while end < len(text) and (text[end] in _NAME_CHARS or (end == i and text[end] in "@*#?")):
            end += 1
        name = text[i:end]
        if not name:
            raise EnvFileError(self.line, "a bad ${...} substitution")
        self.pos = end
        if length:
            self._expect("}")
            return str(len(self._value(name) or ""))
        if self.pos < len(text) and text[self.pos] == "}":
            self.pos += 1
            return self._value(name) or ""
        colon = text.startswith(":", self.pos)
        if colon:
            self.pos += 1
        op = text[self.pos] if self.pos < len(text) else ""
        if not op or op not in "-=+?":
            shown = op if op.isprintable() and op not in "\n" else ""
            raise EnvFileError(self.line, f"`${{{name}{':' if colon else ''}{shown}...}}` is not supported")
        self.pos += 1
        word = self._operand()
        value = self._value(name)
        unset = value is None or (colon and value == "")
        if op == "-":
            return word if unset else value or ""
        if op == "=":
            if unset:
                if not _is_name(name):
                    raise EnvFileError(self.line, f"`${{{name}=...}}`: can't assign to `{name}`")
                self._assign(name, word)
                return word
            return value or ""
        if op == "+":
            return "" if unset else word
        if unset:
            raise EnvFileError(self.line, f"`{name}`: {word or 'parameter null or not set'}")
        return value or ""

    def _operand(self) -> str:
        """The word of ${NAME-word} up to the closing brace, expanded."""
        parts: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise EnvFileError(self.line, "a ${...} substitution is not closed")
            ch = self.text[self.pos]
            if ch == "}":
                self.pos += 1
                return "".join(parts)
            if ch == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise EnvFileError(self.line, "a single quote is not closed")
                parts.append(self.text[self.pos + 1 : end])
                self.pos = end + 1
            elif ch == '"':
                parts.append(self._double_quoted())
            elif ch == "\\" and self.pos + 1 < len(self.text):
                parts.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == "$":
                parts.append(self._dollar())
            elif ch == "`":
                raise EnvFileError(self.line, "command substitution (`...`) is not allowed")
            else:
                if ch == "\n":
                    self.line += 1
                parts.append(ch)
                self.pos += 1

    def _expect(self, ch: str) -> None:
        if not self.text.startswith(ch, self.pos):
            raise EnvFileError(self.line, "a bad ${...} substitution")
        self.pos += 1

    def _value(self, name: str) -> str | None:
        if name and all(ch in _DIGITS for ch in name):
            n = int(name)
            return self.args[n - 1] if 0 < n <= len(self.args) else ("sifbox" if n == 0 else None)
        if name in ("@", "*"):
            return " ".join(self.args)
        if name == "#":
            return str(len(self.args))
        if name == "?":
            return "0"
        if name in self.vars:
            return self.vars[name]
        return self.env.get(name)


def _is_name(key: str) -> bool:
    return bool(key) and key[0] in _NAME_START and all(ch in _NAME_CHARS for ch in key)
