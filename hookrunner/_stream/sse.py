"""Reading an event stream's bytes into events' ``data``, per the WHATWG "Server-sent events" parsing rules, with a
bound on every line and every event.

Stream readers such as httpx-sse buffer a line until its newline and an event until its blank line without
limit (a stream line with no newline grew one process to 600 MB), decode with the ``charset`` the server names
(the standard says always UTF-8), and keep a leading byte-order mark, losing the first event. So the few lines of
parsing live here, fed the body's bytes a read at a time (``_stream/event_stream.py``), where the bounds can be kept:

- bytes are decoded as UTF-8 (invalid bytes become U+FFFD), whatever ``Content-Type`` says; one leading BOM is
  dropped;
- lines end in CRLF, LF or CR; a line starting with ``:`` is a comment (a keep-alive); ``data`` lines are joined
  with ``\\n``; a blank line ends the event; an event left unfinished when the stream ends is discarded (as the
  standard says); Atoms sends no ``event``, ``id`` or ``retry`` fields, and they are ignored;
- what one event may hold is bounded by ``max_size``: its characters plus ``LINE_COST`` for every data line
  (what Python spends on each string), so a million one-character lines are as bounded as one long one; a line
  still arriving is gathered in one buffer, so how the network cuts it into chunks changes nothing. An event past it is skipped, reported as ``OVERSIZED`` once, and the stream goes
  on with the next event; a comment line past it is dropped alone.
"""

from __future__ import annotations

import codecs
import io

__all__ = ["SseReader", "OVERSIZED", "Oversized", "LINE_COST"]

#: What a kept data line costs beyond its characters (a str object and its list slot), counted against max_size.
LINE_COST = 64


class Oversized:
    """Stands for an event skipped because a line or its data was longer than the reader's ``max_size``."""

    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED = Oversized()


class SseReader:
    """Feed it a stream's chunks of bytes in order; each ``feed`` returns the events completed so far: their
    ``data`` text, or ``OVERSIZED`` for one that was skipped."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._started = False  # whether the first character (a possible BOM) was seen
        self._cr = False  # the last chunk ended in CR: a LF starting the next one belongs to that line end
        self._pending = io.StringIO()  # the line not ended yet (appending to it is amortised O(1))
        self._pending_size = 0
        self._pending_comment = False
        self._discarding = False  # inside the rest of a line already over max_size
        self._data: list[str] = []
        self._data_size = 0
        self._oversized = False  # the current event is being skipped
        self._out: list[str | Oversized] = []

    def feed(self, chunk: bytes) -> list[str | Oversized]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._cr and text[:1] == "\n":
            text = text[1:]  # the LF of a CRLF cut between two chunks: its line already ended at the CR
        self._cr = False
        if not text:
            return []
        self._cr = text[-1] == "\r"  # (a line ending in CR is passed on now, not when the next byte comes)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if len(lines) == 1:
            self._extend_pending(text)
            return []
        first = self._finish_pending(lines[0])
        if first is not None:
            self._line(first)
        index, end = 1, len(lines) - 1
        longest = self.max_size - LINE_COST  # the longest value a one-line event may have
        while index < end:
            line = lines[index]
            # The usual event, ``data: {...}`` and its blank line, in one step (what ``_line`` twice would do).
            if (
                index + 1 < end
                and not lines[index + 1]
                and line[:6] == "data: "
                and not self._data
                and not self._oversized
                and len(line) - 6 <= longest
            ):
                self._out.append(line[6:])
                index += 2
                continue
            self._line(line)
            index += 1
        self._extend_pending(lines[-1])
        out, self._out = self._out, []
        return out

    def _extend_pending(self, piece: str) -> None:
        if self._discarding or not piece:
            return
        if not self._pending_size:
            self._pending_comment = piece[0] == ":"
        self._pending_size += len(piece)
        if self._pending_size > self.max_size:
            self._reset_pending()
            self._discarding = True
            if not self._pending_comment:  # a keep-alive comment past the bound is dropped alone, not its event
                self._skip_event()
        else:
            self._pending.write(piece)

    def _reset_pending(self) -> None:
        self._pending = io.StringIO()
        self._pending_size = 0

    def _finish_pending(self, piece: str) -> str | None:
        """The line that ``piece`` ends, or None when it was over the bound (already reported)."""
        if self._discarding:
            self._discarding = False
            return None
        if not self._pending_size:
            return piece
        self._pending.write(piece)
        line = self._pending.getvalue()
        self._reset_pending()
        return line

    def _skip_event(self) -> None:
        self._oversized = True
        self._data.clear()
        self._data_size = 0

    def _line(self, line: str) -> None:
        if not line:  # a blank line ends the event
            if self._oversized:
                self._out.append(OVERSIZED)
                self._oversized = False
            elif self._data:
                self._out.append(self._data[0] if len(self._data) == 1 else "\n".join(self._data))
                self._data = []
                self._data_size = 0
            return
        if line[0] == ":" or self._oversized:
            return  # a comment, or a line of an event being skipped
        if len(line) > self.max_size:
            self._skip_event()
            return
        name, colon, value = line.partition(":")
        if name != "data":
            return
        if value[:1] == " ":
            value = value[1:]
        self._data_size += len(value) + LINE_COST
        if self._data_size > self.max_size:
            self._skip_event()
        else:
            self._data.append(value)
