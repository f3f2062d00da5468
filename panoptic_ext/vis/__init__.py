"""What draws: the dataset browser (ground truth and training targets), training-metric plots
and the demo's overlays of predictions. Nothing here is needed to train or evaluate a model."""
