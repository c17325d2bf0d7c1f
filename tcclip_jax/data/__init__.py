"""Video data: annotation lists, decoding, sampling, augmentation and datasets."""
