"""Declarative multi-model workflows: a YAML graph of model and tool steps, run concurrently, scoped,
validated, checkpointed, resumable and priced. See docs/workflows.md."""

from modelyard.workflows.api import ResumeError, RunStream, Workflow, resume_run
from modelyard.workflows.backend import (
    HttpBackend,
    ModelAnswer,
    ModelBackend,
    ModelCall,
    ModelEstimate,
    default_backend_factory,
)
from modelyard.workflows.checkpoint import MemoryStore, SqliteStore
from modelyard.workflows.issues import Issue, WorkflowError
from modelyard.workflows.planner import WorkflowPlan
from modelyard.workflows.records import RunEvent, RunResult, RunStatus, StepRecord, StepState
from modelyard.workflows.schema import workflow_json_schema
from modelyard.workflows.spec import WorkflowSpec, load_workflow, parse_workflow

__all__ = [
    "HttpBackend",
    "Issue",
    "MemoryStore",
    "ModelAnswer",
    "ModelBackend",
    "ModelCall",
    "ModelEstimate",
    "ResumeError",
    "RunEvent",
    "RunResult",
    "RunStatus",
    "RunStream",
    "SqliteStore",
    "StepRecord",
    "StepState",
    "Workflow",
    "WorkflowError",
    "WorkflowPlan",
    "WorkflowSpec",
    "default_backend_factory",
    "load_workflow",
    "parse_workflow",
    "resume_run",
    "workflow_json_schema",
]
