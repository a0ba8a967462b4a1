"""The tests that share one running local stack (``local_stack``, this package's conftest)."""
