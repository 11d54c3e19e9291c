"""The test suite: real processes, a real Redis, real databases; see tests/conftest.py."""
