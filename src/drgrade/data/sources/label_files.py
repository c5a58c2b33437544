"""Reading label files as datasets ship them: encodings, headers, rows with their lines."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable
from pathlib import Path

from drgrade.data.manifest import parse_grade
from drgrade.errors import DrgradeError, Problem


def read_text(path: Path) -> str:
    """The text of a label file, or an error naming the line where it stops being UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DrgradeError(f"{path}: cannot read ({error.strerror or error})") from None
    save_as = "save it as UTF-8 (Excel: 'CSV UTF-8'; any editor: 'save with encoding')"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DrgradeError(f"{path}:1: the file is UTF-16 text; {save_as}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DrgradeError(
            f"{path}:{line}: byte {data[error.start]:#04x} is not UTF-8: text in another "
            f"encoding (latin-1?) or not a text file; {save_as}") from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DrgradeError(f"{path}:{line}: a NUL byte: not a text file, or UTF-16 without "
                           f"its byte-order mark; {save_as}")
    return text


def read_csv_rows(
    path: Path, required: dict[str, str], extras: bool = False, delimiter: str = ","
) -> tuple[list[dict], list[tuple[str, int]]]:
    """Rows of a headed CSV as {our name: value}, with their (file, 1-based line).

    `required` maps our column names to the file's header names, compared without
    surrounding spaces (IDRiD ships 'Risk of macular edema ' with a trailing space);
    `extras` keeps the other named columns under their own names. Entirely empty rows
    (IDRiD ships some) are skipped: they hold no image.
    """
    if not path.is_file():
        raise DrgradeError(f"{path}: label file not found")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader, [])]
        absent = [theirs for theirs in required.values() if theirs not in header]
        if absent:
            raise DrgradeError(
                f"{path}:1: missing column(s) {', '.join(absent)}; "
                f"found {', '.join(h for h in header if h) or 'no header'}"
            )
        where = {ours: header.index(theirs) for ours, theirs in required.items()}
        if extras:
            where |= {h: i for i, h in enumerate(header) if h and h not in required.values()}
        rows, places = [], []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            row = row + [""] * (len(header) - len(row))
            rows.append({ours: row[i].strip() for ours, i in where.items()})
            places.append((str(path), reader.line_num))
    except csv.Error as error:  # e.g. a field over csv's 131,072-character limit
        raise DrgradeError(f"{path}:{reader.line_num}: not a readable CSV row ({error}); "
                           "is this the label file?") from None
    return rows, places


def graded_rows(
    raw: list[dict], places: list[tuple[str, int]], describe: Callable[[dict], dict]
) -> tuple[list[dict], list[tuple[str, int]], list[Problem]]:
    """Valid rows (grade parsed, `describe` adding patient/eye), their places, and problems."""
    rows, kept, problems = [], [], []
    for item, (file, line) in zip(raw, places, strict=True):
        grade = parse_grade(item["grade"], file, line)
        if isinstance(grade, Problem):
            problems.append(grade)
        elif not item["image_id"]:
            problems.append(Problem(file, line, "", "empty image name"))
        else:
            rows.append({**item, "grade": grade, **describe(item)})
            kept.append((file, line))
    return rows, kept, problems


def own_patient(item: dict) -> dict:
    # These datasets publish no patient ids, so each image is its own group.
    return {"patient": item["image_id"]}
