"""modelyard.schema."""
