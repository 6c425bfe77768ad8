"""The training stage: DDP training of the zoo's models on the shared datasets,
writing run directories with checkpoints + sidecars (contracts §1).

::

    config.py        TrainConfig: defaults, an optional YAML file and CLI flags, written as config.yaml
    data.py          torch Dataset wrappers over models.datasets, augmentation, models.preprocess
    distributed.py   process-group setup from the torchrun environment, reductions, the elastic launcher
    engine.py        train_one_epoch and evaluate, explicit inputs, no files written
    metrics.py       top-1 accuracy and COCO mAP (pycocotools)
    checkpoint.py    checkpoints (.pt) and their JSON sidecars, written crash-safe
    runlog.py        rank 0's record of a run: metrics.jsonl, TensorBoard events, curves.png
    train.py         the run: main wires config, data, model, optimiser, checkpoints, run log
    errors.py        TrainingError and its tree
    __main__.py      the CLI (edge-train / python -m training)
    configs/         the YAML run files (signs, scenes, the demo's two)

Entry points: ``edge-train`` / ``python -m training`` (:mod:`training.__main__`),
:func:`training.train.run_worker` for one process/rank.

Errors: :mod:`training.errors`. This package imports ``models`` only, never
another stage.
"""
