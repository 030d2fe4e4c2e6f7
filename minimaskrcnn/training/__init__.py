"""Training machinery: target assignment (matcher, sampler), optimiser and schedule
(:mod:`~minimaskrcnn.training.optim`: ``SGD``, ``WarmupMultiStepLR``), checkpoints
(:mod:`~minimaskrcnn.training.checkpoint`) and the loop."""
