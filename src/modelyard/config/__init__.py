"""modelyard.config."""
