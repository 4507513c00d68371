"""Metrics computed from a trained model: test log-likelihood and its by-products."""
