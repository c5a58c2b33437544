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

from PIL import Image, UnidentifiedImageError

from drgrade.data.fundus import RejectedImage
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, REFERABLE_GRADE
from drgrade.inference.grader import Grader, GraderBase, Prediction

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


def check_is_image(data: bytes, name: str) -> None:
    """Refuse empty files (400), non-images (415) and images too large to decode (413)."""
    if not data:
        raise UploadRejected(400, f"{name}: the file is empty (0 bytes)")
    try:
        # Reads the header only: cheap, and tells a text file or PDF from a photograph.
        with Image.open(io.BytesIO(data)):
            pass
    except UnidentifiedImageError:
        raise UploadRejected(415, f"{name}: not an image (format not recognised); upload a "
                                  f"colour fundus photograph as JPEG, PNG or TIFF") from None
    except Image.DecompressionBombError as error:
        raise UploadRejected(413, f"{name}: too many pixels to decode safely ({error})") from None
    except Exception:  # a damaged image: the full decode below names what is wrong
        pass


def png_data_url(image: Image.Image) -> str:
    """An image as a data: URL, so that nothing derived from an upload is kept on disk."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class PhotographGrader:
    """Grades uploads one at a time with a loaded grader; PyTorch graders also draw heat maps."""

    def __init__(self, grader: GraderBase, explain_method: str = "gradcam"):
        self.grader = grader
        self.explain_method = explain_method
        # Grad-CAM puts hooks on the network: two requests at once would mix their maps.
        self.lock = threading.Lock()
        self.layer = None
        self.heat_map_note: str | None = None
        if not isinstance(grader, Grader):
            self.heat_map_note = ("no heat maps: they need the PyTorch checkpoint (run folder "
                                  "or .ckpt), not the ONNX file")
            return
        from drgrade.inference.explain import cam_method, target_layer

        cam_method(explain_method)  # a wrong name fails at start, not at the first upload
        try:
            self.layer = target_layer(grader.module.model, grader.settings.image_size)
        except DrgradeError as error:  # e.g. a vision transformer: grade anyway, say why
            self.heat_map_note = f"no heat maps: {error}"

    def info(self) -> dict:
        """What the page needs to know about the model."""
        return {
            "head": self.grader.head,
            "grades": list(GRADE_NAMES),
            "referable_grade": REFERABLE_GRADE,
            "image_size": self.grader.settings.image_size,
            "heat_maps": self.layer is not None,
            "heat_map_method": self.explain_method if self.layer is not None else None,
            "heat_map_note": self.heat_map_note,
        }

    def grade(self, data: bytes, filename: str | None = None) -> dict:
        """The result for one uploaded file; `UploadRejected` with the status if unusable."""
        name = display_name(filename)
        check_is_image(data, name)
        try:  # decoded from memory: the upload never touches the disk
            image = self.grader.load(io.BytesIO(data))
        except RejectedImage as error:
            raise UploadRejected(422, f"{name}: cannot be graded as a colour fundus "
                                      f"photograph: {error.reason}") from None
        with self.lock:
            inputs = self.grader.to_batch([image])
            prediction = self.grader.predictions([name], self.grader.outputs(inputs))[0]
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
            "cut_points": [float(t) for t in self.grader.thresholds] if regression else None,
            "heat_map": heat_map,
            "heat_map_method": self.explain_method if heat_map else None,
            "heat_map_note": self.heat_map_note,
        }
