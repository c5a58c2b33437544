"""drgrade: grade diabetic retinopathy from colour fundus photographs."""

import os

from drgrade.errors import DrgradeError

# onnxruntime sends usage telemetry and writes a device id under ~/.cache/Microsoft unless
# this is "1" when it is first imported (ort.disable_telemetry_events() afterwards does not
# stop it). Every drgrade module imports this package first, so predict, export's parity
# check and serve all get it; any other value is overridden, since grading photographs on a
# clinic's machine must not report to anyone.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

__version__ = "0.1.0"
__all__ = ["DrgradeError", "__version__"]
