"""Trained models as objects for notebooks and applications: `tokenizer.Tokenizer`
(`vqjax.pretrained.load`) and `prior.Prior` (`vqjax.prior.load`)."""
