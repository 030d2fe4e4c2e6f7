"""Helpers for tests and notebooks: tier fixtures, hypothesis strategies, gradcheck."""

from minimaskrcnn.testing.gradcheck import GradcheckError, check_layer, gradcheck

__all__ = ["GradcheckError", "check_layer", "gradcheck"]
