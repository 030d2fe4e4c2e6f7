"""Training: the loop and what it is made of (Detectron2's ``engine/``, torchvision's reference
``train.py`` and ``engine.py``).

    loop.py        train(): seeded batches, one train step per iteration under the schedule,
                   logs, checkpoints, resume, periodic validation (an ``evaluate`` callable),
                   the loss curve
    step.py        train_step: forward, loss normalisers, backward, gradient allreduce, guard,
                   SGD (Detectron2's ``SimpleTrainer.run_step``, torchvision's
                   ``train_one_epoch``)
    guard.py       the divergence guard: finite checks, NonFiniteLossError
    run_folder.py  RunFolder: a run's files, its lock, checkpoints, logs and their truncation
    optim.py       SGD (``torch.optim.SGD`` semantics) and WarmupMultiStepLR (Detectron2)

Checkpoints are a file format one floor down (:mod:`minimaskrcnn.checkpoint`), data parallelism
is :mod:`minimaskrcnn.distributed`, and the matcher and sampler belong to the model
(:mod:`minimaskrcnn.model`). Import from the modules (``from minimaskrcnn.training.loop import
train``): this file imports nothing, so ``training.optim`` alone stays light.
"""
