"""Where photos come from: COCO downloads, the embedded default dataset, the drawn scenes, and the one checker of
COCO-format instances files."""
