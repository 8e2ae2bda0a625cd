"""Reading product-table files row by row, so that no row is lost unnamed.

pandas' CSV reader replaces undecodable bytes and drops rows it cannot split with a
warning that names neither the product nor (usefully) the line. Here the text is decoded
first (UTF-8, else line by line cp1252 / latin-1, counted; or the encoding the user
names), every record keeps the lines it came from, and rows that cannot be parsed are
kept aside, so the caller can report each with its line and id.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .catalog import CatalogError, LoadReport

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
                  ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}

REPAIRED_ENCODING = ("lines not in UTF-8, decoded as cp1252 / latin-1 "
                     "(set catalog.encoding if the file uses another encoding)")
REPAIRED_SHORT = "rows with fewer fields than the header (the missing cells are left empty)"
NOTED_MULTILINE = "records spanning several lines (a quoted line break, or a quote closed late)"
SKIPPED_LONG = "unparseable rows: more fields than the header (an unquoted comma?)"
SKIPPED_UNCLOSED = "unparseable rows: a quote is never closed (the rest of the file is one cell)"
SKIPPED_JSON = "unparseable rows: not a JSON object"

_END = "\x00kaleido-end-of-table\x00"  # a last line that tells whether the file ends inside quotes


@dataclass
class RawTable:
    """A product table read from a file, before the column mapping is applied.

    Attributes:
        frame: the rows; every CSV value is a string, JSON / Parquet values are as stored.
        where: per row of ``frame``, where it came from: ``line 5``, ``lines 5-7``, ``row 5``.
        bad: rows that could not be parsed, as ``(reason, where, fields)``; the caller
            reports them once it knows which field holds the id.
    """

    frame: pd.DataFrame
    where: list[str]
    bad: list[tuple[str, str, list]] = field(default_factory=list)

    @property
    def header(self) -> list[str]:
        return [str(c) for c in self.frame.columns]


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


def decode_table(raw: bytes, path: Path, encoding: str, report: LoadReport) -> str:
    """The text of a table file.

    Args:
        raw: the file's bytes.
        path: for messages.
        encoding: ``auto`` (a BOM if there is one, else UTF-8, and lines that are not
            UTF-8 decoded as cp1252, else latin-1, each counted in ``report``), or a
            Python codec name used strictly.
        report: where the repaired lines are counted.

    Raises:
        CatalogError: an unknown codec, or bytes the named encoding cannot decode (the
            message names the line).
    """
    if encoding != "auto" or raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        codec = encoding if encoding != "auto" else "utf-16"
        try:
            return raw.decode(codec)
        except LookupError as err:
            raise CatalogError(f"{path}: unknown encoding {encoding!r} (catalog.encoding)") from err
        except UnicodeDecodeError as err:
            line = raw.count(b"\n", 0, err.start) + 1
            raise CatalogError(f"{path}: line {line} is not valid {codec} (byte {raw[err.start]:#04x}); "
                               "set catalog.encoding to the file's encoding, or auto") from err
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            try:
                lines.append(line.decode("cp1252"))
            except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
                lines.append(line.decode("latin-1"))
            report.repair(REPAIRED_ENCODING, f"line {number}")
    return "\n".join(lines)


def _unique(header: list[str]) -> list[str]:
    """Repeated column names get ``.1``, ``.2`` suffixes, as pandas names them."""
    seen: dict[str, int] = {}
    out = []
    for name in header:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}.{k}")
    return out


def parse_csv(text: str, path: Path, delimiter: str, report: LoadReport) -> RawTable:
    """Split CSV text into records, each with its lines; the first record is the header.

    Blank lines are ignored; a short row is padded with empty cells (counted); a row with
    more fields than the header, or a last record whose quote never closes, goes to
    ``RawTable.bad``; a record over several lines is noted by the caller.
    """
    tail = "" if not text or text.endswith(("\n", "\r")) else "\n"
    reader = csv.reader(io.StringIO(text + tail + _END, newline=""), delimiter=delimiter)
    records, last = [], 0
    try:
        for fields in reader:
            records.append((last + 1, reader.line_num, fields))
            last = reader.line_num
    except csv.Error as err:
        raise CatalogError(f"{path}: line {reader.line_num}: cannot split into fields ({err}); "
                           "is a quote never closed?") from err
    first, end, fields = records.pop()
    unclosed = fields != [_END]
    if unclosed:  # the file ended inside a quoted cell, which swallowed the sentinel line
        fields[-1] = fields[-1][: -len(_END)].rstrip("\r\n")
        records.append((first, end - 1, fields))
    records = [r for r in records if r[2]]  # blank lines
    if not records:
        raise CatalogError(f"{path}: the table is empty (no header line)")
    (_, _, header), rows = records[0], records[1:]
    header = _unique([h.strip() for h in header])
    kept, where, bad = [], [], []
    for i, (first, last, fields) in enumerate(rows):
        label = _lines(first, last)
        if unclosed and i == len(rows) - 1:
            bad.append((SKIPPED_UNCLOSED, label, fields))
        elif len(fields) > len(header):
            bad.append((SKIPPED_LONG, label, fields))
        else:
            if len(fields) < len(header):
                report.repair(REPAIRED_SHORT, label)
                fields = fields + [""] * (len(header) - len(fields))
            kept.append(fields)
            where.append(label)
    return RawTable(pd.DataFrame(kept, columns=header, dtype=object), where, bad)


def parse_jsonl(text: str, path: Path) -> RawTable:
    """One JSON object per line (or a whole-file JSON array of objects); a line that is not
    a JSON object goes to ``RawTable.bad`` with its line number."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list):
            rows = [(f"row {i}", item) for i, item in enumerate(items, start=1)]
            return _records(rows)
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        rows.append((f"line {number}", item))
    return _records(rows)


def _records(rows: list[tuple[str, object]]) -> RawTable:
    good = [(where, item) for where, item in rows if isinstance(item, dict)]
    bad = [(SKIPPED_JSON, where, []) for where, item in rows if not isinstance(item, dict)]
    frame = pd.DataFrame.from_records([item for _, item in good]) if good else pd.DataFrame()
    return RawTable(frame, [where for where, _ in good], bad)


def read_table(path: Path, report: LoadReport, fmt: str | None = None,
               encoding: str = "auto") -> RawTable:
    """Read a product table (CSV / TSV, JSONL, Parquet) with where each row came from.

    Args:
        path: the file.
        report: counts repaired lines and short rows.
        fmt: ``csv``, ``jsonl`` or ``parquet``; guessed from the suffix when None.
        encoding: text encoding of CSV / JSONL (see :func:`decode_table`).

    Raises:
        CatalogError: an unknown format, an unreadable file, or text that cannot be decoded.
    """
    fmt = fmt or TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise CatalogError(f"{path}: unknown table format {fmt or path.suffix!r}; "
                           f"use one of {sorted(set(TABLE_SUFFIXES))}")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
            return RawTable(frame, [f"row {i}" for i in range(1, len(frame) + 1)])
        raw = path.read_bytes()
    except Exception as err:  # noqa: BLE001 - pyarrow has its own exception types
        raise CatalogError(f"{path}: cannot read as {fmt} ({type(err).__name__}: {err})") from err
    text = decode_table(raw, path, encoding, report)
    if fmt == "jsonl":
        return parse_jsonl(text, path)
    return parse_csv(text, path, "\t" if path.suffix.lower() == ".tsv" else ",", report)
