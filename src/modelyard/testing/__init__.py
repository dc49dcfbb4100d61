"""Utilities for testing gateways and routing configs against the simulator."""
