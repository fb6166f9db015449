"""Data: image sources (embedded photographs, folders, TFDS) in `images`, and the cached code
maps of a dataset that priors train on in `codes`."""
