"""Validation problems, each pointing at a file, a line and (when it has one) a step."""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.schema.errors import ModelyardError


@dataclass(frozen=True, order=True)
class Issue:
    file: str
    line: int
    message: str
    step: str | None = None

    def __str__(self) -> str:
        where = f" step '{self.step}':" if self.step else ""
        return f"{self.file}:{self.line}:{where} {self.message}"


class WorkflowError(ModelyardError):
    """A workflow file that cannot run; `issues` lists every problem found, in file order."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = sorted(set(issues))
        super().__init__("\n".join(str(issue) for issue in self.issues))
