"""Training of the scale-wise AR model with VAR's recipe: optimizer groups, schedules, the loop, checkpoints."""
