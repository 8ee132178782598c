"""Cut a streamed reply into pieces worth speaking as soon as they are complete.

Speech can start on the first sentence while the model still writes the
rest. A very long first sentence is cut at a clause (a comma) so the caller
does not wait for it, and never in the middle of a word.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s+")
_CLAUSE_END = re.compile(r"[,;:]\s+")
CLAUSE_AFTER_CHARS = 80
HARD_LIMIT_CHARS = 240


class SentenceSplitter:
    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the pieces it completed."""
        self._buffer += text
        pieces = []
        while piece := self._next_piece():
            pieces.append(piece)
        return pieces

    def flush(self) -> str:
        """What is left once the stream has ended."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def _next_piece(self) -> str:
        match = _SENTENCE_END.search(self._buffer)
        cut = match.end() if match else None
        if cut is None and len(self._buffer) > CLAUSE_AFTER_CHARS:
            clause = next(_CLAUSE_END.finditer(self._buffer, CLAUSE_AFTER_CHARS // 2), None)
            cut = clause.end() if clause else None
        if cut is None and len(self._buffer) > HARD_LIMIT_CHARS:
            space = self._buffer.rfind(" ", 0, HARD_LIMIT_CHARS)
            cut = space + 1 if space > 0 else HARD_LIMIT_CHARS
        if cut is None:
            return ""
        piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
        return piece or self._next_piece()
