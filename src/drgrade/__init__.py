"""drgrade: grade diabetic retinopathy from colour fundus photographs."""

from drgrade.errors import DrgradeError

__version__ = "0.1.0"
__all__ = ["DrgradeError", "__version__"]
