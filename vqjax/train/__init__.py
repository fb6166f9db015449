"""Training: the generic train state (`state`), the loop (`loop`) and the experiment that runs
any family on it (`experiment.train_and_evaluate`)."""
