"""What every part builds on: the device mesh and compile options (`parallel`), checkpoints of
any pytree (`checkpoints`), optimizers and weight averages (`optim`), image grids (`images`)."""
