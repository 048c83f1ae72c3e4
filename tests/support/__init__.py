"""Helpers the tests share (fakes, reference implementations, tiny configs): no test module imports another."""
