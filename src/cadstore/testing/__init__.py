"""Test infrastructure shipped with cadstore.

* :mod:`cadstore.testing.conformance`: the suite every storage backend passes (needs pytest
  and hypothesis).
* :mod:`cadstore.testing.workload`: a realistic, deterministic generator of encoded CAD items
  for tests, demos and benchmarks (numpy only).
"""
