"""Patient data: readers (one module per source format) and their validation."""

from .nonmem import NonmemData, read_nonmem, simulate_nonmem, validate_nonmem

__all__ = ["NonmemData", "read_nonmem", "simulate_nonmem", "validate_nonmem"]
