"""The international 5-grade diabetic retinopathy scale."""

GRADE_NAMES = ("no DR", "mild", "moderate", "severe", "proliferative")
NUM_GRADES = len(GRADE_NAMES)
# Grade 2 (moderate NPDR) and above is referable to an ophthalmologist.
REFERABLE_GRADE = 2


def grade_name(grade: int) -> str:
    """Human name of a grade, e.g. 2 -> 'moderate'."""
    return GRADE_NAMES[grade]


def is_referable(grade: int) -> bool:
    """True for grades that need referral (moderate or worse)."""
    return grade >= REFERABLE_GRADE
