"""Typed workflow outputs: `outputs: {name: {value: "{{ template }}", schema: {...} | file.json}}`.

At the end of a run each typed output is checked with the rule model steps follow (`jsonout`): a string is
read as JSON (code fences allowed) and validated (a string that is not JSON is validated as the string
itself); anything else is validated as it is. An invalid value that came straight from a model step (the
template is just `{{ step }}` or `{{ step.field }}`, a plain top-level model step) gets one repair: that
step's own call is sent again with its answer and jsonout's repair message, and the reply (for `.field`:
that field of the reply) is checked again. Still invalid, or from anywhere else: the run fails, naming the
output and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from modelyard.workflows.backend import ModelCall
from modelyard.workflows.calls import Spend, StepFailure
from modelyard.workflows.jsonout import AnswerInvalid, parse_structured, repair_message, response_format, validate
from modelyard.workflows.records import StepRecord

if TYPE_CHECKING:
    from modelyard.workflows.spec import StepSpec, WorkflowSpec

Schema = dict[str, Any] | bool
#: The engine's repair of output `name` by `step` (`field`, schema, problem): the reply's text, or None when
#: the step cannot be asked (it did not succeed).
Repair = Callable[[str, "StepSpec", str | None, Schema, str], Awaitable[str | None]]
_FROM_STEP = re.compile(r"^\s*\{\{\s*(?P<step>[A-Za-z_][\w-]*)(?:\.(?P<field>[A-Za-z_]\w*))?\s*\}\}\s*$")


def split_outputs(raw: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """The outputs' templates, and the declared schemas (inline, or a file name still to read) by name."""
    templates: dict[str, str] = {}
    schemas: dict[str, Any] = {}
    for name, entry in raw.items():
        if isinstance(entry, dict):
            templates[name] = entry.get("value", "")
            if "schema" in entry:
                schemas[name] = entry["schema"]
        else:
            templates[name] = entry
    return templates, schemas


def conform(value: Any, schema: Schema) -> Any:
    """The output's value, checked against its schema (a JSON string read first); raises AnswerInvalid."""
    if not isinstance(value, str):
        return validate(value, schema)
    try:
        return parse_structured(value, schema)
    except AnswerInvalid:
        try:
            return validate(value, schema)  # a plain string output (`type: string`)
        except AnswerInvalid:
            pass
        raise


def repairable_source(template: str, steps: dict[str, StepSpec]) -> tuple[StepSpec, str | None] | None:
    """The model step (and field) an output is read straight from, or None when a repair cannot apply."""
    match = _FROM_STEP.match(template)
    step = steps.get(match.group("step")) if match else None
    if match is None or step is None or step.kind != "model" or step.foreach is not None:
        return None
    return step, match.group("field")


def repair_call(call: ModelCall, output: Any, name: str, field: str | None, schema: Schema, problem: str) -> ModelCall:
    """The step's call again with its answer and the repair message; a whole-answer output asks for its schema."""
    answer = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    what = f"the field `{field}` of your answer" if field else "your answer"
    messages = [
        *call.messages,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": repair_message(f"{what} (workflow output '{name}'): {problem}")},
    ]
    fmt = call.response_format if field else response_format(name, schema)
    return replace(call, messages=messages, response_format=fmt, metadata={**call.metadata, "repair": "output"})


def spent_on_repair(record: StepRecord, spend: Spend, name: str, reply: str | None) -> None:
    """A repair's money, tokens and attempts added to the step's record (which counts them once), and its
    reply for output `name` kept beside them, so the one log write that pays for it also records what was bought."""
    record.cost_usd += spend.cost_usd
    record.prompt_tokens += spend.prompt_tokens
    record.completion_tokens += spend.completion_tokens
    record.latency_ms += spend.latency_ms
    record.attempts += spend.attempts
    record.repaired = True
    if reply is not None:
        record.output_repairs = {**record.output_repairs, name: reply}  # a new dict: a reused record's is shared


def paid_repair(record: StepRecord, name: str) -> str | None:
    """The reply an earlier session of this run already paid for to repair output `name` (None: not bought)."""
    return record.output_repairs.get(name)


def repaired_value(text: str, field: str | None, schema: Schema) -> Any:
    """The output's value in a repair's reply, checked; raises AnswerInvalid."""
    if field is not None:  # the whole answer again, or just the field's value: either is taken
        try:
            reply = parse_structured(text, True)
        except AnswerInvalid:
            reply = None
        if isinstance(reply, dict) and field in reply:
            return conform(reply[field], schema)
    return conform(text, schema)


def unrepaired_problems(spec: WorkflowSpec, outputs: dict[str, Any]) -> list[str]:
    """Typed outputs checked with no repair, where no second call is made (a provider batch's rows)."""
    errors: list[str] = []
    for name, schema in spec.output_schemas.items():
        if name in outputs:
            try:
                outputs[name] = conform(outputs[name], schema)
            except AnswerInvalid as invalid:
                errors.append(_mismatch(name, str(invalid)))
    return errors


def _mismatch(name: str, problem: str) -> str:
    return f"output '{name}' does not match its schema: {problem}"


async def check_outputs(spec: WorkflowSpec, outputs: dict[str, Any], repair: Repair) -> list[str]:
    """Check every typed output in `outputs` (repaired values replace the invalid ones); the problems left."""
    errors: list[str] = []
    for name, schema in spec.output_schemas.items():
        if name not in outputs:  # its template failed: that is already an error
            continue
        try:
            outputs[name] = conform(outputs[name], schema)
            continue
        except AnswerInvalid as invalid:
            problem = str(invalid)
        source = repairable_source(spec.outputs.get(name, ""), spec.steps)
        reply = None
        try:
            if source is not None:
                reply = await repair(name, source[0], source[1], schema, problem)
            if reply is None:
                errors.append(_mismatch(name, problem))
                continue
            outputs[name] = repaired_value(reply, source[1] if source else None, schema)
        except AnswerInvalid as again:
            step = source[0].id if source else "?"
            errors.append(f"output '{name}' does not match its schema, even after step '{step}' repaired it: {again}")
        except StepFailure as exc:
            errors.append(f"output '{name}' does not match its schema ({problem}); its repair failed: {exc.message}")
    return errors
