"""modelyard.server."""
