"""The ONNX runtime path grades with onnxruntime alone: no torch, no Lightning."""

import subprocess
import sys

LOADED = ("import sys; from drgrade.cli import main; code = main({args!r}); "
          "heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{'torch', 'lightning', "
          "'torchvision', 'torchmetrics'}}); print('HEAVY', heavy); sys.exit(code)")


def test_onnx_predict_imports_neither_torch_nor_lightning(onnx_model, photographs, tmp_path):
    args = ["predict", str(onnx_model), str(photographs / "IDRiD_001.jpg"),
            "--out", str(tmp_path / "one.csv"), "--workers", "0"]
    result = subprocess.run([sys.executable, "-c", LOADED.format(args=args)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout
    assert "graded 1" in result.stdout


def test_onnx_serve_app_imports_neither_torch_nor_lightning(onnx_model):
    code = ("import sys; from drgrade.inference.loader import load_grader; "
            "from drgrade.serve.app import create_app; "
            f"create_app(load_grader({str(onnx_model)!r})); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# Makes torch and Lightning impossible to import, as on a machine without them installed.
WITHOUT_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'lightning', 'torchmetrics'):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
from drgrade.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_onnx_predict_runs_where_torch_is_not_installed(onnx_model, photographs, tmp_path):
    out = tmp_path / "no-torch.csv"
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "predict", str(onnx_model),
                             str(photographs / "IDRiD_001.jpg"), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "graded 1" in result.stdout and out.is_file()
