"""The one exception type users see: a message naming the file, row or option and the fix."""

from dataclasses import dataclass


class DrgradeError(Exception):
    """A problem with the user's input; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One offending input: where it is, what value, and why it is wrong."""

    file: str
    line: int | None
    value: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason} (value: {self.value!r})"


def problems_error(title: str, problems: list[Problem], limit: int = 30) -> DrgradeError:
    """One error listing every offending row (the first `limit` of them, then a count)."""
    lines = [f"{title}: {len(problems)} problem(s)"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return DrgradeError("\n".join(lines))
