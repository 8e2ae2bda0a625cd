"""Property-based fuzz test of the catalog readers (Hypothesis).

Generated product tables (CSV written properly or naively, TSV-free; JSONL; five
encodings; two line ends; missing cells, odd and duplicate ids, titles with commas,
quotes, line breaks, accents, CJK and emoji; files cut short) and image bytes (valid
images of many modes and formats, cut short, random bytes behind a real signature,
empty, missing). Two properties:

- loading and decoding raise nothing but the loader's own ``CatalogError``;
- every row of the file is loaded, or named in the load report (by its id or its line),
  and every product's image is decoded or named in the decoding report.

A fixed set of 40 examples runs in the default suite; ``KALEIDO_FUZZ_EXAMPLES=500``
runs that many fresh random ones.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kaleido.data import CatalogConfig, CatalogError, ImageLoadError, LoadReport, load_catalog

EXAMPLES = int(os.environ.get("KALEIDO_FUZZ_EXAMPLES", 40))
HEADER = ["id", "title", "description", "category", "subcategory", "image"]
ENCODINGS = ["utf-8", "utf-8-sig", "cp1252", "latin-1", "utf-16"]

text_chars = st.sampled_from(list("abcXYZ019 ,;\"'|\t\n-_.é眼ü€’😀ßñ\x00"))
odd_ids = st.sampled_from(["007", "nan", "None", "NULL", "1e3", " 12 ", "-1", "", " ", "a|b",
                           'x"y', "a,b", "0x1F", "١٢", "id\twith tab"])
ids = st.one_of(odd_ids, st.integers(0, 40).map(str), st.text(text_chars, max_size=6))


@st.composite
def image_bytes(draw) -> bytes | None:
    """A file's bytes, or None for a path with no file."""
    kind = draw(st.sampled_from(["valid", "valid", "truncated", "random", "signature", "empty",
                                 "missing"]))
    if kind == "missing":
        return None
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=64))
    if kind == "signature":
        magic = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM",
                                      b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]))
        return magic + draw(st.binary(max_size=64))
    fmt, mode = draw(st.sampled_from([("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"),
                                      ("PNG", "I;16"), ("PNG", "1"), ("JPEG", "RGB"), ("JPEG", "L"),
                                      ("JPEG", "CMYK"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "CMYK"),
                                      ("WEBP", "RGBA")]))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    data = buf.getvalue()
    return data[:draw(st.integers(0, len(data) - 1))] if kind == "truncated" else data


@st.composite
def rows(draw) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 8))):
        row = {"id": draw(ids), "title": draw(st.text(text_chars, max_size=12)),
               "description": draw(st.text(text_chars, max_size=6)),
               "category": draw(st.sampled_from(["Top", "Bottom", "", "Jupés"])),
               "subcategory": draw(st.sampled_from(["Shirts", "Skirts", "", "眼镜"])),
               "image": draw(st.sampled_from(["img0.png", "img1.jpg", "img2", "nope.jpg", "",
                                              "img0.png|img1.jpg"]))}
        if out and draw(st.integers(0, 9)) == 0:
            row["id"] = out[-1]["id"]  # a duplicate
        out.append(row)
    return out


def _csv_text(table: list[dict], style: str, end: str, sep: str = ",") -> tuple[str, list[int]]:
    """The file's text and where each row starts (its offset in the text)."""
    buf, starts = io.StringIO(), []
    writer = csv.writer(buf, lineterminator=end, delimiter=sep,
                        quoting=csv.QUOTE_ALL if style == "all" else csv.QUOTE_MINIMAL)
    writer.writerow(HEADER)
    for row in table:
        starts.append(len(buf.getvalue()))
        values = [row[c] for c in HEADER]
        if style == "naive":  # what a hand-made export does: no quoting at all
            buf.write(sep.join(values) + end)
        else:
            writer.writerow(values)
    return buf.getvalue(), starts


def _jsonl_text(table: list[dict], ascii_only: bool) -> tuple[str, list[int]]:
    lines = [json.dumps(row, ensure_ascii=ascii_only) + "\n" for row in table]
    return "".join(lines), [len("".join(lines[:i])) for i in range(len(lines))]


def _norm(value) -> str:
    return " ".join(str(value).split())


def _names(report: LoadReport, pid: str, lines: range) -> bool:
    """Whether some report entry names the product id or one of the row's lines (a row
    written with a raw line break in it spans several, the first possibly blank)."""
    for entry in report.entries:
        item = entry["item"]
        if pid and (item == pid or item.startswith(f"{pid} (") or f"(id {pid!r})" in item):
            return True
        for first, last in re.findall(r"\blines? (\d+)(?:-(\d+))?", item):
            if lines and int(first) <= lines[-1] and lines[0] <= int(last or first):
                return True
    return False


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize="KALEIDO_FUZZ_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(table=rows(), fmt=st.sampled_from(["csv", "csv", "jsonl"]),
       style=st.sampled_from(["minimal", "all", "naive"]), encoding=st.sampled_from(ENCODINGS),
       end=st.sampled_from(["\n", "\r\n"]), cut=st.none() | st.floats(0.3, 1.0),
       images=st.lists(image_bytes(), min_size=3, max_size=3))
def test_every_row_is_loaded_or_named(table, fmt, style, encoding, end, cut, images):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in zip(["img0.png", "img1.jpg", "img2"], images):
            if data is not None:
                (root / name).write_bytes(data)
        eight_bit = encoding in ("cp1252", "latin-1")
        if eight_bit:
            # 8-bit text that is also valid UTF-8 (e.g. cp1252 "ß€") cannot be told from UTF-8:
            # the one case left to catalog.encoding. Ids stay ASCII here so the check is exact.
            table = [{**row, "id": row["id"].encode("ascii", "replace").decode()} for row in table]
        if fmt == "csv":
            text, starts = _csv_text(table, style, end)
        else:
            text, starts = _jsonl_text(table, ascii_only=eight_bit)
        raw = text.encode(encoding, errors="replace")
        kept = len(raw) if cut is None else int(len(raw) * cut)
        (root / f"products.{fmt}").write_bytes(raw[:kept])
        # the input is the rows that begin before the cut, each with the lines it spans
        ends = starts[1:] + [len(text)]
        present = [(row, range(text.count("\n", 0, start) + 1, text.count("\n", 0, end - 1) + 2))
                   for row, start, end in zip(table, starts, ends)
                   if len(text[:start].encode(encoding, errors="replace")) < kept]

        try:
            catalog = load_catalog(CatalogConfig(path=str(root / f"products.{fmt}"), columns="kaleido",
                                                 max_pixels=1_000_000))
        except CatalogError:
            return  # the loader's own error: allowed (duplicate ids, undecodable UTF-16, ...)
        report = catalog.report
        for row, lines in present:
            pid = _norm(row["id"])
            assert pid in catalog or _names(report, pid, lines), (
                f"the row of id {pid!r} on lines {list(lines)} is neither loaded nor named:\n"
                f"{report.summary()}\n{report.entries}\n{raw[:kept]!r}")

        decoding = LoadReport(source="fuzz")
        seen = {p.id for p, _, _ in catalog.iter_images(report=decoding, all_views=True)}
        for product in catalog:
            assert product.id in seen or _names(decoding, product.id, range(0))
            try:
                catalog.load_image(product, min_side=8)
            except ImageLoadError:
                pass
