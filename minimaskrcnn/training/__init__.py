"""Training machinery: target assignment (matcher, sampler), optimiser, schedules, the loop."""
