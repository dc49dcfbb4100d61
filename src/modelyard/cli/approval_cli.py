"""`modelyard runs approve|reject RUN_ID STEP [--comment ...]`: a person's decision for a waiting approval step.

The decision is written to the run store first (at most once per step: a second one is refused), then the run
is resumed by default (`--no-resume` only records it): every finished call is reused from the store, so
nothing is paid twice, and the run goes on from the gate.
"""

from __future__ import annotations

import asyncio
import getpass
from typing import Annotated

import typer

from modelyard.cli.workflows import (
    BackendOption,
    ConfigOption,
    GatewayOption,
    JsonOption,
    StoreOption,
    _console,
    _factory,
    _fail,
    _resume_spec,
    _run,
    _store,
    finish,
)
from modelyard.workflows.api import ResumeError
from modelyard.workflows.approval import DecisionError, decide
from modelyard.workflows.backend import BackendUnavailable
from modelyard.workflows.inputs import InputError

RunIdArgument = Annotated[str, typer.Argument(help="The run id (see `runs list --waiting`).")]
StepArgument = Annotated[str, typer.Argument(help="The waiting step: its key (loop.round key) or its name.")]
CommentOption = Annotated[str | None, typer.Option("--comment", "-m", help="Why; later steps read it.")]
ResumeFlag = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the run after deciding.")]
ProgressFlag = Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress table.")]


def register(runs_app: typer.Typer) -> None:
    """Add the two commands to `runs` (once, however often the CLI is assembled)."""
    if any(command.callback is approve_command for command in runs_app.registered_commands):
        return
    runs_app.command("approve")(approve_command)
    runs_app.command("reject")(reject_command)


def approve_command(
    run_id: RunIdArgument,
    step: StepArgument,
    comment: CommentOption = None,
    resume: ResumeFlag = True,
    store: StoreOption = None,
    json_out: JsonOption = None,
    config: ConfigOption = None,
    gateway_url: GatewayOption = None,
    backend: BackendOption = None,
    progress: ProgressFlag = True,
) -> None:
    """Approve a waiting approval step, then continue the run."""
    _decide(run_id, step, True, comment, resume, store, json_out, config, gateway_url, backend, progress)


def reject_command(
    run_id: RunIdArgument,
    step: StepArgument,
    comment: CommentOption = None,
    resume: ResumeFlag = True,
    store: StoreOption = None,
    json_out: JsonOption = None,
    config: ConfigOption = None,
    gateway_url: GatewayOption = None,
    backend: BackendOption = None,
    progress: ProgressFlag = True,
) -> None:
    """Reject a waiting approval step (the comment tells the next steps why), then continue the run."""
    _decide(run_id, step, False, comment, resume, store, json_out, config, gateway_url, backend, progress)


def _decide(
    run_id: str,
    step: str,
    approved: bool,
    comment: str | None,
    resume: bool,
    store: str | None,
    json_out: str | None,
    config: str | None,
    gateway_url: str | None,
    backend: str | None,
    progress: bool,
) -> None:
    console = _console(stderr=json_out == "-")
    factory = _factory(backend) if resume else None
    runs = _store(store)
    try:
        try:
            key, made = decide(runs, run_id, step, approved=approved, comment=comment, decided_by=_who())
        except DecisionError as exc:
            raise _fail(f"error: {exc.message}") from None
        verdict = "approved" if made["approved"] else "rejected"
        console.print(f"{verdict} step {key} of run {run_id}", highlight=False, markup=False)
        if factory is None:
            console.print(f"continue it with: modelyard run --resume {run_id}", highlight=False, markup=False)
            return
        spec = _resume_spec(runs, run_id, None)
        job = _run(spec, None, factory, runs, config, gateway_url, run_id, None, False, progress, console)
        try:
            result = asyncio.run(job)
        except ResumeError as exc:
            console.print(f"the decision is stored; not resumed now: {exc}", highlight=False, markup=False)
            return
        except (InputError, BackendUnavailable) as exc:
            raise _fail(f"error: {exc}") from None
    finally:
        runs.close()
    finish(result, json_out, console)


def _who() -> str:
    """Who decided, as the store records it: the local user on the command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
