"""Readers and writers. Inputs are opened read-only; outputs are written atomically."""
