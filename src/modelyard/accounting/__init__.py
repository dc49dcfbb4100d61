"""modelyard.accounting."""
