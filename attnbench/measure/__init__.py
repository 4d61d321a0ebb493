"""Measurements, one concern a module: timing, memory, flops, error, env."""
