"""The detector: backbone, head, the training loop and how devices share it."""
