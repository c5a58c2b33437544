"""Using a trained grader: prediction, heat maps, export, the screening page."""
