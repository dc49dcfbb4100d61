"""Helpers for the workflow tests: workflows from inline YAML."""

from __future__ import annotations

import textwrap

from modelyard.workflows.spec import WorkflowSpec, parse_workflow

HEADER = "schema: modelyard.workflow/v1\nname: test\n"


def workflow(body: str, name: str = "wf.yaml", header: bool = True) -> WorkflowSpec:
    """A validated spec from YAML (dedented); the header lines come first unless header=False."""
    text = (HEADER if header else "") + textwrap.dedent(body).lstrip("\n")
    return parse_workflow(text, name)
