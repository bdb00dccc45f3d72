"""Search heads and training options on cached features with Optuna (``seqvision tune``)."""
