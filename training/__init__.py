"""The training stage: DDP training of the zoo's models on the shared datasets,
writing run directories with checkpoints + sidecars (contracts §1).

Entry points: ``edge-train`` / ``python -m training`` (:mod:`training.__main__`),
:func:`training.train.run_worker` for one process/rank.
"""
