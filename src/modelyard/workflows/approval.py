"""Approval steps: a run that waits for a person, across processes.

Reaching an `approve:` step with no decision records the step as `waiting` (its rendered `prompt` and `show`
and the time it started waiting go into the run's log) and the run stops once nothing else can proceed.
A person decides with `modelyard runs approve|reject RUN STEP` or `POST /admin/runs/{id}/steps/{step}/approve`:
the decision is one row of the run store's decisions table, written at most once per run and step key (a
second decision is refused, never overwrites), and `run --resume` turns it into the step's output
`{approved, comment, decided_by, decided_at}`. Every finished call is reused from the log, so nothing is paid
twice. A step past its `timeout` when the run is resumed (or a decision is attempted) gets `on_timeout`.
Inside a loop each round's gate has its own key (`build#2.review_gate`) and so its own decision.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from modelyard.schema.errors import ModelyardError
from modelyard.workflows.checkpoint import DecisionStore, RunStore, load_run
from modelyard.workflows.records import StepRecord, StepState
from modelyard.workflows.templates import TemplateEngine, TemplateError

if TYPE_CHECKING:
    from modelyard.workflows.records import RunResult
    from modelyard.workflows.spec import StepSpec

#: A decision's comment is at most this many characters (CLI and admin API alike).
MAX_COMMENT_CHARS = 4000
#: Who decided when a step's timeout passed.
TIMEOUT_DECIDER = "timeout"


class DecisionError(ModelyardError, ValueError):
    """A decision that cannot be recorded; `status` is the HTTP status the admin API answers with."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def decision(approved: bool, comment: str | None, decided_by: str, at: float | None = None) -> dict[str, Any]:
    """The step's output (and the stored row): what later steps read as `{{ gate.approved }}` etc."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return {"approved": approved, "comment": comment, "decided_by": decided_by, "decided_at": moment.isoformat()}


def _decisions(store: RunStore, run_id: str) -> DecisionStore | None:
    """The store as a decision store, or None for one that keeps no decisions (a batch row's checkpoint)."""
    return store if hasattr(store, "add_decision") and hasattr(store, "decisions") else None  # type: ignore[return-value]


def _timed_out(waiting: dict[str, Any], now: float) -> bool:
    timeout, since = waiting.get("timeout"), waiting.get("waiting_since")
    if not isinstance(timeout, int | float) or not isinstance(since, int | float):
        return False
    return now - since >= timeout


def _store_timeout(store: DecisionStore, run_id: str, key: str, waiting: dict[str, Any]) -> dict[str, Any]:
    """Record `on_timeout` for a step whose timeout passed; the decision that holds (ours, or one made first)."""
    made = decision(waiting.get("on_timeout") == "approve", None, TIMEOUT_DECIDER)
    store.add_decision(run_id, key, made)
    return store.decisions(run_id).get(key, made)


def gate(
    step: StepSpec,
    key: str,
    order: list[int],
    context: dict[str, Any],
    *,
    store: RunStore,
    run_id: str,
    templates: TemplateEngine,
    previous: StepRecord | None,
) -> StepRecord:
    """The approval step's record in this session: decided (succeeded), or waiting for a person."""
    assert step.approve is not None
    spec = step.approve
    record = StepRecord(key, step.qualname, "approval", order=order)
    decisions = _decisions(store, run_id)
    if decisions is None:
        record.state, record.error = StepState.FAILED, "approval steps need a run store that keeps decisions"
        return record
    now = time.time()
    known = decisions.decisions(run_id).get(key)
    waited = previous.output if previous is not None and previous.state is StepState.WAITING else None
    since = waited.get("waiting_since", now) if isinstance(waited, dict) else now
    if known is None:
        try:
            shown = templates.render(spec.show, context) if spec.show is not None else None
            prompt = templates.render(spec.prompt, context)
        except TemplateError as exc:
            record.state, record.error = StepState.FAILED, f"template: {exc.message}"
            return record
        waiting = {
            "prompt": prompt,
            "show": shown,
            "waiting_since": since,
            "timeout": spec.timeout,
            "on_timeout": spec.on_timeout,
        }
        if not _timed_out(waiting, now):
            record.state, record.output, record.started_at = StepState.WAITING, waiting, since
            record.note = f"waiting for approval: modelyard runs approve {run_id} {key}"
            return record
        known = _store_timeout(decisions, run_id, key, waiting)
    record.state, record.output = StepState.SUCCEEDED, known
    record.started_at, record.finished_at = since, now
    verdict = "approved" if known.get("approved") else "rejected"
    record.note = f"{verdict} by {known.get('decided_by')}" + (f": {known['comment']}" if known.get("comment") else "")
    return record


def decide(
    store: RunStore, run_id: str, step: str, *, approved: bool, comment: str | None, decided_by: str
) -> tuple[str, dict[str, Any]]:
    """Record a person's decision for the waiting step `step` (its key, or its name when one such step waits).

    Returns the step key and the stored decision; raises DecisionError (404 unknown run or step, 409 a step
    not waiting, already decided, or past its timeout, 400 a bad comment).
    """
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise DecisionError(f"the comment is longer than {MAX_COMMENT_CHARS} characters", 400, "invalid_comment")
    decisions = _decisions(store, run_id)
    stored = load_run(store, run_id)
    if stored is None or decisions is None:
        raise DecisionError(f"no run {run_id!r} in the store", 404, "run_not_found")
    records = stored.records
    waiting = [r for r in records.values() if r.state is StepState.WAITING and step in (r.key, r.step)]
    made = decisions.decisions(run_id)
    if not waiting:
        known = made.get(step)
        if known is not None:
            verdict = "approved" if known.get("approved") else "rejected"
            raise DecisionError(
                f"step {step!r} of run {run_id} was already decided: {verdict} by {known.get('decided_by')} "
                f"at {known.get('decided_at')}",
                409,
                "already_decided",
            )
        named = [r for r in records.values() if step in (r.key, r.step)]
        if named:
            state = named[-1].state.value
            raise DecisionError(
                f"step {step!r} of run {run_id} is not waiting for approval ({state})", 409, "not_waiting"
            )
        raise DecisionError(f"run {run_id} has no step {step!r}", 404, "step_not_found")
    exact = [r for r in waiting if r.key == step]
    undecided = [r for r in waiting if r.key not in made]
    if not exact and len(undecided) > 1:  # a name shared by fan-out items or sub-workflow instances
        keys = ", ".join(r.key for r in undecided)
        message = f"{len(undecided)} steps named {step!r} wait in run {run_id}: name one of {keys}"
        raise DecisionError(message, 409, "ambiguous_step")
    record = (exact or undecided or waiting)[-1]
    output = record.output if isinstance(record.output, dict) else {}
    if _timed_out(output, time.time()):
        held = _store_timeout(decisions, run_id, record.key, output)
        verdict = "approved" if held.get("approved") else "rejected"
        raise DecisionError(
            f"step {record.key!r} of run {run_id} waited past its timeout: on_timeout {verdict} it",
            409,
            "approval_timed_out",
        )
    made_now = decision(approved, comment, decided_by)
    if not decisions.add_decision(run_id, record.key, made_now):
        existing = decisions.decisions(run_id).get(record.key)
        if existing != made_now:  # not our own write whose answer was lost
            verdict = "approved" if existing and existing.get("approved") else "rejected"
            raise DecisionError(
                f"step {record.key!r} of run {run_id} was already decided ({verdict})", 409, "already_decided"
            )
    return record.key, made_now


def waiting_errors(records: dict[str, StepRecord], errors: list[str]) -> tuple[list[str], str]:
    """A waiting run's errors without those that only say "not reached yet", and its message."""
    waiting = [r.key for r in records.values() if r.state is StepState.WAITING and r.kind == "approval"]
    kept = [e for e in errors if "which waiting" not in e and not e.startswith("output '")]
    return kept, "waiting for approval: " + ", ".join(waiting)


def finite_timeout(value: Any) -> bool:
    """An approval timeout is a finite number of seconds above zero (YAML's .inf passes the schema)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def waiting_lines(result: RunResult) -> list[str]:
    """What a waiting run awaits, and how to decide: for `run` and `runs show`."""
    lines: list[str] = []
    for record in result.records.values():
        if record.kind != "approval":
            continue
        output = record.output if isinstance(record.output, dict) else {}
        if record.state is StepState.WAITING:
            lines.append(f"waiting for approval: {record.key}: {output.get('prompt', '')}".rstrip())
            if output.get("show"):
                lines.extend(f"  | {line}" for line in str(output["show"]).splitlines()[:40])
            if output.get("timeout") is not None:
                lines.append(f"  timeout {output['timeout']:g}s, then on_timeout: {output.get('on_timeout')}")
            lines.append(f"  approve: modelyard runs approve {result.run_id} {record.key} [--comment ...]")
            lines.append(f"  reject:  modelyard runs reject {result.run_id} {record.key} --comment ...")
        elif record.state is StepState.SUCCEEDED and "approved" in output:
            verdict = "approved" if output.get("approved") else "rejected"
            comment = f": {output['comment']}" if output.get("comment") else ""
            lines.append(
                f"decision: {record.key} {verdict} by {output.get('decided_by')} at {output.get('decided_at')}{comment}"
            )
    return lines
