"""The contract the backends rely on: the public interface, options, errors, the
checkpoint format, argument checks and the pure-Python batch helpers.

Nothing here imports NumPy-heavy data code, torch or JAX: importing a backend loads
this layer and nothing above it.
"""
