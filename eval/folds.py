"""The project's one fold splitter: stratified k-fold, shuffled with a seed.

Every cross-fitting in the project (the replay's outer folds, the trust policy's inner
stacking folds, the profiles' held-out recalibration metrics, the benchmarks) splits rows with
``stratified_folds``, so the same seed on the same strata always gives the same folds. It is
scikit-learn's ``StratifiedKFold(shuffle=True)``; a stratum with fewer rows than folds is left
out of some folds (scikit-learn's warning about it is expected here and silenced).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from core.errors import InputError


def stratified_folds(strata: Sequence[object] | np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 .. folds-1) of each row; each fold holds about 1/folds of every stratum."""
    from sklearn.model_selection import StratifiedKFold

    strata = np.asarray(strata)
    counts = np.unique(strata, return_counts=True)[1] if strata.size else np.array([0])
    if folds < 2 or folds > counts.max():
        raise InputError(
            f"cannot split {strata.size} rows into {folds} stratified folds "
            f"(largest stratum: {int(counts.max())} rows)"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    assignment = np.empty(strata.size, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held) in enumerate(splitter.split(np.zeros(strata.size), strata)):
            assignment[held] = fold
    return assignment


def held_out_rows(assignment: np.ndarray) -> list[np.ndarray]:
    """Per fold, the indices of its held-out rows in increasing order."""
    return [np.flatnonzero(assignment == fold) for fold in range(int(assignment.max()) + 1)]
