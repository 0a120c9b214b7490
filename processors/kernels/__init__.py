"""Pure numba kernels: arrays in, arrays out, ``cache=True``, no I/O.

Each kernel has a slow numpy/scipy reference in the tests.
"""
