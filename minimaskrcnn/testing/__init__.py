"""Helpers for tests and notebooks: tier fixtures, hypothesis strategies, gradcheck."""

from minimaskrcnn.testing.gradcheck import GradcheckError, check_layer, gradcheck  # noqa: E402

__all__ = ["GradcheckError", "check_layer", "gradcheck"]
