"""The pre-deep-learning parts of R-CNN: selective search proposals and their cache."""
