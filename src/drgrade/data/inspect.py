"""A readable summary of a Manifest: what a user needs to know before training."""

from drgrade.data.manifest import Manifest, majority_grade, patients_in_several_splits, split_counts
from drgrade.grades import GRADE_NAMES

MISSING_SHOWN = 10  # missing images listed by name; the rest are counted


def describe(manifest: Manifest) -> str:
    """Layout, images per split and grade, majority baselines, leaks and problems."""
    table = manifest.table
    lines = [
        f"source: {manifest.source}",
        f"layout: {manifest.layout}",
        f"images listed: {len(table):,}; found on disk: {manifest.n_found:,} of {len(table):,}",
        "",
        "images per split and grade (count, % of split):",
    ]
    counts = split_counts(table)
    header = f"  {'split':<8}{'total':>8}" + "".join(
        f"{f'{g} {name}':>22}" for g, name in enumerate(GRADE_NAMES)
    )
    lines.append(header)
    for split, row in counts.iterrows():
        total = int(row.sum())
        cells = "".join(f"{f'{n:,} ({100 * n / total:.1f}%)':>22}" for n in row)
        lines.append(f"  {split:<8}{total:>8,}{cells}")
    majority = majority_grade(table)
    lines += ["", f"majority-class accuracy (always predicting grade {majority}, "
                  f"the most common in {'train' if 'train' in counts.index else 'all'}):"]
    for split, row in counts.iterrows():
        lines.append(f"  {split:<8}{100 * row[majority] / row.sum():6.2f}%")
    if len(counts.index) > 1:
        overlap = patients_in_several_splits(table)
        lines += ["", f"patients with images in more than one split: {overlap:,}"]
    problems = [*manifest.warnings, *([manifest.elsewhere] if manifest.elsewhere else []),
                *(f"missing: {p}" for p in manifest.missing[:MISSING_SHOWN])]
    if len(manifest.missing) > MISSING_SHOWN:
        problems.append(f"... and {len(manifest.missing) - MISSING_SHOWN:,} more missing")
    lines += ["", "problems: none" if not problems else "problems:"]
    lines += [f"  - {w}" for w in problems]
    return "\n".join(lines)
