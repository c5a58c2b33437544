"""Lightning without the noise: drgrade prints its own summaries."""

import logging
import warnings


def quiet_lightning() -> None:
    """Hide Lightning's start-up notes and tips, and a deprecation nobody using drgrade can act
    on (Lightning 2.6 calls a torch API that torch 2.14 deprecates)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
