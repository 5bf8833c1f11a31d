"""Test infrastructure shipped with cadstore.

* :mod:`cadstore.testing.conformance`: the suite every storage backend passes (needs pytest
  and hypothesis).

Realistic synthetic items for tests are :mod:`cadstore.synthetic`'s.
"""
