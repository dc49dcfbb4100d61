"""modelyard: a self-hosted LLM gateway, router and workflow engine."""

__version__ = "0.1.0"
