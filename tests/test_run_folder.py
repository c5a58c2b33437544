"""The run folder's readers: which epoch best.ckpt holds."""

import pandas as pd

from drgrade.run_folder import chosen_epoch


def test_chosen_epoch_is_the_first_with_the_best_validation_kappa(tmp_path):
    assert chosen_epoch(tmp_path) is None  # no epoch yet
    pd.DataFrame({"epoch": [0, 1, 2, 3], "val_kappa": [0.2, 0.6, 0.4, 0.6]}).to_csv(
        tmp_path / "log.csv", index=False)
    assert chosen_epoch(tmp_path) == (2, 0.6)
