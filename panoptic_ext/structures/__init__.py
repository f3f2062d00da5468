"""Pure functions on label structures shared by data, modeling and evaluation: boxes of masks,
COCO-panoptic id <-> RGB encoding, the semantic-label conventions."""
