"""One uploaded photograph -> its grade, probabilities, referable flag and heat map, as JSON.

Framework-free, so that the rules (what is rejected, with which HTTP status) are tested
without a server. The upload goes through exactly the preprocessing of `drgrade predict`
(the grader's own `load`), so the page and the CSV never disagree about a photograph.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

from PIL import Image

from drgrade.data.photographs import NotAnImage, RejectedImage, TooManyPixels
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE
from drgrade.inference.grader import GraderBase, Prediction

MAX_NAME = 120  # characters of an uploaded file's name kept for display


class UploadRejected(DrgradeError):
    """An upload that cannot be graded, with the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def display_name(filename: str | None) -> str:
    """The uploaded file's base name, for messages and captions only (never a path)."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    name = "".join(c for c in name if c.isprintable())
    return name[:MAX_NAME] or "upload"


def png_data_url(image: Image.Image) -> str:
    """An image as a data: URL, so that nothing derived from an upload is kept on disk."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PhotographGrader:
    """Grades uploads with a loaded grader; PyTorch graders also draw heat maps.

    Thread-safe: the web app runs a few gradings at once, each in a worker thread.
    """

    def __init__(self, grader: GraderBase, explain_method: str = "gradcam"):
        self.grader = grader
        self.explain_method = explain_method
        # Grad-CAM puts hooks on the network: two requests at once would mix their maps.
        self.lock = threading.Lock()
        self.layer = None
        self.heat_map_note: str | None = None
        if not grader.supports_heat_maps:
            self.heat_map_note = ("no heat maps: they need the PyTorch checkpoint (run folder "
                                  "or .ckpt), not the ONNX file")
            return
        from drgrade.inference.explain import cam_method, target_layer

        cam_method(explain_method)  # a wrong name fails at start, not at the first upload
        try:
            self.layer = target_layer(grader.network.model, grader.card.image_size)
        except DrgradeError as error:  # e.g. a vision transformer: grade anyway, say why
            self.heat_map_note = f"no heat maps: {error}"

    def info(self) -> dict:
        """What the page needs to know about the model."""
        return {
            "head": self.grader.head,
            "grades": list(GRADE_NAMES),
            "referable_grade": REFERABLE_GRADE,
            "image_size": self.grader.card.image_size,
            "heat_maps": self.layer is not None,
            "heat_map_method": self.explain_method if self.layer is not None else None,
            "heat_map_note": self.heat_map_note,
        }

    def grade(self, data: bytes, filename: str | None = None) -> dict:
        """The result for one uploaded file; `UploadRejected` with the status if unusable."""
        name = display_name(filename)
        if not data:
            raise UploadRejected(400, f"{name}: the file is empty (0 bytes)")
        try:  # decoded from memory: the upload never touches the disk
            photograph = self.grader.photograph(io.BytesIO(data))
        except TooManyPixels as error:
            raise UploadRejected(413, f"{name}: {error.reason}") from None
        except NotAnImage as error:
            raise UploadRejected(415, f"{name}: {error.reason}") from None
        except RejectedImage as error:
            raise UploadRejected(422, f"{name}: cannot be graded as a colour fundus "
                                      f"photograph: {error.reason}") from None
        with self.lock:
            inputs = self.grader.to_batch([photograph.image])
            prediction = self.grader.predictions([name], self.grader.outputs(inputs))[0]
            prediction.warning = photograph.warning
            heat_map = self._heat_map(inputs, prediction) if self.layer is not None else None
        return self.result(prediction, heat_map)

    def _heat_map(self, inputs, prediction: Prediction) -> str:
        from drgrade.inference.explain import heat_map_sheets

        return png_data_url(heat_map_sheets(self.grader, inputs, [prediction],
                                            self.explain_method, self.layer)[0])

    def result(self, prediction: Prediction, heat_map: str | None) -> dict:
        """The JSON answer for a graded photograph."""
        regression = self.grader.is_regression
        return {
            "image": prediction.image,
            "grade": prediction.grade,
            "grade_name": prediction.grade_name,
            "referable": prediction.referable,
            "referable_grade": REFERABLE_GRADE,
            "head": self.grader.head,
            "probabilities": prediction.probabilities,
            "score": prediction.score,
            # The score's cut points between grades, so the page can place it on the scale.
            "cut_points": [float(t) for t in self.grader.card.cut_points] if regression else None,
            "heat_map": heat_map,
            "heat_map_method": self.explain_method if heat_map else None,
            "heat_map_note": self.heat_map_note,
            "warning": prediction.warning,
        }
