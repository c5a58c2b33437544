"""onnxruntime reports nothing and writes no device id when drgrade is imported first."""

import os
import subprocess
import sys

# A one-node ONNX model (y = x + x) run in onnxruntime, as predict, export and serve do.
RUN_ONNX = """
import os
import numpy as np
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "double", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
import onnxruntime
session = onnxruntime.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
print(session.run(None, {"x": np.ones(2, np.float32)})[0].tolist(),
      os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


def run_in_empty_home(tmp_path, script: str) -> tuple[str, list[str]]:
    """Run `script` with HOME an empty folder; its output and what it left under ~/.cache."""
    home = tmp_path / "home"
    home.mkdir()
    # A user's own "0" must not win over drgrade's setting. onnxruntime itself sends nothing
    # when CI is set, which would make the control test below pass for the wrong reason.
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {
        "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "ORT_DISABLE_TELEMETRY": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    left = sorted(str(p.relative_to(home)) for p in (home / ".cache").rglob("*"))
    return result.stdout.strip(), left


def test_importing_drgrade_turns_onnxruntime_telemetry_off(tmp_path):
    output, left = run_in_empty_home(tmp_path, "import drgrade\n" + RUN_ONNX)
    assert output == "[2.0, 2.0] 1"
    assert not [p for p in left if "Microsoft" in p], left


def test_without_drgrade_onnxruntime_writes_its_device_id(tmp_path):
    # What the test above guards against; if onnxruntime stops doing this, that test can no
    # longer fail and should be revisited.
    output, left = run_in_empty_home(tmp_path, RUN_ONNX)
    assert output == "[2.0, 2.0] 0"
    assert ".cache/Microsoft/DeveloperTools/.onnxruntime/deviceid" in left, left
