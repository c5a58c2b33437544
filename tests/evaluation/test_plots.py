"""Figures: what each one shows, read off the matplotlib figure before it is saved."""

import numpy as np
import pytest

from drgrade import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions make, kept open instead of saved."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: figures.append(figure) or path)
    yield figures
    for figure in figures:
        plots.plt.close(figure)


def test_referable_roc_marks_every_operating_point(drawn, tmp_path):
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 200)
    score = (grades >= 2) + rng.normal(0, 0.8, 200)
    points = {"model's grade": (0.71, 0.75), "threshold fixed on validation": (0.74, 0.71),
              "sensitivity >= 0.90 on this split": (0.90, 0.60)}
    plots.plot_referable_roc(grades, score, tmp_path / "roc.png", points=points)
    legend = drawn[0].axes[0].get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    assert [label.split(":")[0] for label in labels[-3:]] == list(points)
    assert labels[-1].endswith("sens. 0.90, spec. 0.60")
    # Below the axes, where it hides no part of the curve.
    assert legend.get_bbox_to_anchor().y1 < drawn[0].axes[0].get_window_extent().y0


def test_referable_roc_refuses_more_points_than_it_has_markers(tmp_path):
    with pytest.raises(ValueError, match="at most 4 operating points"):
        plots.plot_referable_roc(np.array([0, 2]), np.array([0.1, 0.9]), tmp_path / "roc.png",
                                 points={str(k): (0.5, 0.5) for k in range(5)})
