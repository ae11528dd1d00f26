"""moto_server with its Step Functions interpreter made as strict as AWS Step Functions.

moto's interpreter (a port of LocalStack's) is lenient where AWS fails an execution. A green
local run that AWS would reject is a defect of the test rig, so the harness starts moto through
this file, which patches the interpreter before serving. Each rule cites the AWS documentation
it comes from; `tests/tests/aws_rules.rs` proves each one fires.

Already strict in moto 5.2.5 (proven by the same tests, not patched here): a `.$` parameter,
`ItemsPath` or `MaxConcurrencyPath` on a path that does not exist fails with `States.Runtime`;
a state's output or a Lambda result of 256 KiB or more fails with `States.DataLimitExceeded`.

Usage: python strict_moto.py [moto_server arguments]
"""

import faulthandler
import json
import os
import signal
import sys
import threading
import time

# `kill -USR1 <pid>` dumps every thread's stack to the log: how a stuck execution is diagnosed.
faulthandler.register(signal.SIGUSR1, all_threads=True)

from moto.stepfunctions.parser.api import ExecutionFailedEventDetails, HistoryEventType
from moto.stepfunctions.parser.asl.component.common.error_name.custom_error_name import (
    CustomErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.error_name import ErrorName
from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import (
    ErrorEqualsDecl,
)
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
    StatesErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.intrinsic.function.statesfunction.math_operations.math_add import (
    MathAdd,
)
from moto.stepfunctions.parser.asl.component.state.choice.comparison.comparison_operator_type import (
    ComparisonOperatorType,
)
from moto.stepfunctions.parser.asl.component.state.choice.comparison.comparison_variable import (
    ComparisonVariable,
)
from moto.stepfunctions.parser.asl.component.state.choice.comparison.variable import (
    NoSuchVariable,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (
    DistributedIterationComponent,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor.distributed_item_processor_worker import (
    DistributedItemProcessorWorker,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_sfn import (
    StateTaskServiceSfn,
)
from moto.stepfunctions.parser.asl.component.state.state import CommonStateField
from moto.stepfunctions.parser.asl.component.state.exec.state_task.state_task_lambda import (
    StateTaskLambda,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
from moto.stepfunctions.parser.asl.utils.json_path import NoSuchJsonPathError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _fail(env, error: StatesErrorNameType, cause: str) -> FailureEventException:
    return FailureEventException(
        failure_event=FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=error),
            event_type=HistoryEventType.ExecutionFailed,
            event_details=EventDetails(
                executionFailedEventDetails=ExecutionFailedEventDetails(
                    error=error.to_name(), cause=cause
                )
            ),
        )
    )


# Rule 1. A Choice rule whose Variable names a path that does not exist fails the execution with
# States.Runtime ("Invalid path '$.x': The choice state's condition path references an invalid
# value."); only IsPresent may probe a missing path.
# https://docs.aws.amazon.com/step-functions/latest/dg/state-choice.html (Choice Rules, IsPresent)
_choice_eval = ComparisonVariable._eval_body


def _strict_choice(self, env):
    try:
        self.variable.eval(env)
    except NoSuchJsonPathError:
        # moto raises (and the execution hangs) where AWS finds nothing, e.g. `$.a.b[0]` when
        # `$.a` is an array: a missing path like any other, which IsPresent answers false.
        env.stack.append(NoSuchVariable(self.variable.string_sampler.literal_value))
    value = env.stack[-1]
    if (
        isinstance(value, NoSuchVariable)
        and self.comparison_function.operator_type != ComparisonOperatorType.IsPresent
    ):
        env.stack.pop()
        raise _fail(
            env,
            StatesErrorNameType.StatesRuntime,
            f"Invalid path '{self.variable.string_sampler.literal_value}': "
            "The choice state's condition path references an invalid value.",
        )
    self.comparison_function.eval(env)


ComparisonVariable._eval_body = _strict_choice


# Rule 1b. The same for a Task's `.$` parameter on a missing path: States.Runtime ("The JSONPath
# ... could not be found in the input"). moto reports it as States.TaskFailed, which States.ALL
# would catch.
# https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html (States.Runtime)
_task_from_error = StateTaskLambda._from_error


def _strict_task_from_error(self, env, ex):
    if isinstance(ex, NoSuchJsonPathError):
        return _fail(env, StatesErrorNameType.StatesRuntime, str(ex)).failure_event
    return _task_from_error(self, env, ex)


StateTaskLambda._from_error = _strict_task_from_error


# Rule 2. States.MathAdd takes integers between -2147483648 and 2147483647 (and its result must
# fit too); byte counts of large blobs do not.
# https://docs.aws.amazon.com/step-functions/latest/dg/intrinsic-functions.html#asl-intrsc-func-math-operation
def _strict_math_add(self, env):
    self.argument_list.eval(env=env)
    args = env.stack.pop()
    a = self._validate_integer_value(args[0])
    b = self._validate_integer_value(args[1])
    for value in (a, b, a + b):
        if not INT32_MIN <= value <= INT32_MAX:
            raise _fail(
                env,
                StatesErrorNameType.StatesRuntime,
                f"States.MathAdd: {value} is outside the 32-bit integer range "
                f"[{INT32_MIN}, {INT32_MAX}]",
            )
    env.stack.append(a + b)


MathAdd._eval_body = _strict_math_add


# Rule 3. States.ALL catches and retries every error except the terminal States.DataLimitExceeded
# and States.Runtime: "This error type can't catch the States.DataLimitExceeded terminal error
# type and runtime error types."
# https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html (States.ALL)
_UNCATCHABLE = {
    StatesErrorNameType.StatesStatesDataLimitExceeded.to_name(),
    StatesErrorNameType.StatesRuntime.to_name(),
}
_error_equals_eval = ErrorEqualsDecl._eval_body


def _strict_error_equals(self, env):
    error_name = env.stack[-1]
    if (
        ErrorEqualsDecl._STATE_ALL_ERROR in self.error_names
        and getattr(error_name, "error_name", None) in _UNCATCHABLE
    ):
        env.stack.pop()
        env.stack.append(False)
        return
    _error_equals_eval(self, env)


ErrorEqualsDecl._eval_body = _strict_error_equals


# Rule 4. A Distributed Map fails with States.ExceedToleratedFailureThreshold when more child
# executions fail than ToleratedFailureCount/ToleratedFailurePercentage allow (both default to 0);
# moto returns null for a failed child and goes on.
# https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html (ToleratedFailurePercentage)
_map_run = DistributedIterationComponent._map_run


def _strict_map_run(self, env, eval_input):
    _MAP_STATE_OF_RUN[eval_input.map_run_record.map_run_arn] = eval_input.state_name
    items = len(env.stack[-1]) if isinstance(env.stack[-1], list) else 0
    _map_run(self, env, eval_input)
    record = eval_input.map_run_record
    failed = record.item_counter.failed.get() + record.item_counter.timed_out.get()
    count = eval_input.tolerated_failure_count or 0
    percentage = eval_input.tolerated_failure_percentage or 0.0
    if failed > count and (items == 0 or failed * 100.0 / items > percentage):
        env.stack.pop()
        raise _fail(
            env,
            StatesErrorNameType.StatesExceedToleratedFailureThreshold,
            f"The specified tolerated failure threshold was exceeded: {failed} of {items} "
            "child executions failed",
        )


DistributedIterationComponent._map_run = _strict_map_run


# Rule 5. An execution history holds at most 25,000 events; an execution that would write more
# fails ("Execution history: 25,000 events in a single state machine execution history"), and a
# Catch cannot take that failure. EXPRESS executions keep no history and have no such quota.
# https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html#service-limits-state-machine-executions
# moto shares one event list among all the children of a Distributed Map; AWS gives each child
# execution its own history, so each child gets its own list here and its own count.
# STRICT_MOTO_HISTORY_LIMIT lowers the limit (tests reach it with a small catalog);
# STRICT_MOTO_STATS names a file that gets one JSON line per child execution (type, events,
# state transitions, status): how `make bench-scale` counts children and their histories.
# moto's ASL grammar knows only `"ExecutionType": "STANDARD"` for a Distributed Map's children;
# AWS also runs EXPRESS children (no history, at most 5 minutes each). So a definition's EXPRESS
# Maps are parsed as STANDARD and remembered by state name (names are unique in a state machine),
# and their children are run as EXPRESS: no history limit, and a child still running after
# STRICT_MOTO_EXPRESS_SECONDS (300, "Maximum execution duration: 5 minutes" for Express
# workflows, same page) fails with States.Timeout when it enters its next state.
EXPRESS_SECONDS = float(os.environ.get("STRICT_MOTO_EXPRESS_SECONDS", "300"))
_EXPRESS_MAPS = set()
_parse = AmazonStateLanguageParser.parse


def _mark_express_maps(states):
    for name, state in states.items():
        processor = state.get("ItemProcessor") or state.get("Iterator") or {}
        config = processor.get("ProcessorConfig") or {}
        if config.get("ExecutionType") == "EXPRESS":
            config["ExecutionType"] = "STANDARD"
            _EXPRESS_MAPS.add(name)
        for inner in [processor] + list(state.get("Branches") or []):
            _mark_express_maps(inner.get("States") or {})


def _parse_with_express_maps(definition):
    try:
        document = json.loads(definition)
    except ValueError:
        return _parse(definition)
    _mark_express_maps(document.get("States") or {})
    return _parse(json.dumps(document))


AmazonStateLanguageParser.parse = staticmethod(_parse_with_express_maps)
# A States.Runtime raised inside a Parallel branch or an inline Map iteration reaches the state
# as that same error on AWS; moto rebuilds it as a custom error name, which refuses the `States.`
# prefix with a ValueError that replaces the cause. Keep the error as it was raised.
def _error_name_as_raised(self, error_name):
    ErrorName.__init__(self, error_name=error_name)


CustomErrorName.__init__ = _error_name_as_raised
HISTORY_LIMIT = int(os.environ.get("STRICT_MOTO_HISTORY_LIMIT", "25000"))
STATS_FILE = os.environ.get("STRICT_MOTO_STATS")
_STATS_LOCK = threading.Lock()
# Each Map Run's state name: whether its children are EXPRESS (`_EXPRESS_MAPS`).
_MAP_STATE_OF_RUN = {}
_add_event = EventManager.add_event


def _limited_add_event(self, context, event_type, *args, **kwargs):
    event_id = _add_event(self, context, event_type, *args, **kwargs)
    if str(event_type).endswith("StateEntered"):
        self.strict_transitions = getattr(self, "strict_transitions", 0) + 1
    limit = getattr(self, "strict_limit", HISTORY_LIMIT)
    # The execution's own end event is the last one it may write.
    if limit is not None and len(self._history_event_list) >= limit - 1:
        self.strict_exceeded = True
    return event_id


EventManager.add_event = _limited_add_event
_state_eval_body = CommonStateField._eval_body


def _strict_state_eval_body(self, env):
    deadline = getattr(env.event_manager, "strict_deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _fail(
            env,
            StatesErrorNameType.StatesTimeout,
            f"An EXPRESS execution runs at most {EXPRESS_SECONDS:.0f} seconds "
            f"(entering state '{self.name}').",
        )
    if getattr(env.event_manager, "strict_exceeded", False):
        raise _fail(
            env,
            StatesErrorNameType.StatesRuntime,
            f"The execution history reached its quota of {HISTORY_LIMIT} events "
            f"(entering state '{self.name}').",
        )
    _state_eval_body(self, env)


CommonStateField._eval_body = _strict_state_eval_body
_child_eval_job = DistributedItemProcessorWorker._eval_job


def _own_history_eval_job(self, env, job):
    express = _MAP_STATE_OF_RUN.get(self._map_run_record.map_run_arn) in _EXPRESS_MAPS
    manager = EventManager()
    manager.strict_limit = None if express else HISTORY_LIMIT
    if express:
        manager.strict_deadline = time.monotonic() + EXPRESS_SECONDS
    env.event_manager = manager
    began = time.monotonic()
    _child_eval_job(self, env, job)
    if STATS_FILE:
        record = {
            "seconds": round(time.monotonic() - began, 3),
            "type": "EXPRESS" if express else "STANDARD",
            "events": len(manager._history_event_list),
            "transitions": getattr(manager, "strict_transitions", 0),
            "failed": job.job_output is None,
        }
        with _STATS_LOCK, open(STATS_FILE, "a") as stats:
            stats.write(json.dumps(record) + "\n")


DistributedItemProcessorWorker._eval_job = _own_history_eval_job


# Rule 6. A Lambda Task whose Invoke call Lambda refuses fails with the error Lambda names,
# prefixed `Lambda.`: a reservation or the account's concurrency full is
# `Lambda.TooManyRequestsException` (Invoke answers HTTP 429 TooManyRequestsException), a service
# fault `Lambda.ServiceException`; these are what a Retry names. moto names every such failure
# `Exception`, which no Retry of ours matches, so an image would fail where AWS retries it.
# https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html
# https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html (Errors)
from botocore.exceptions import ClientError  # noqa: E402
from moto.stepfunctions.parser.api import LambdaFunctionFailedEventDetails  # noqa: E402


def _lambda_api_error(self, env, ex):
    if isinstance(ex, ClientError):
        code = ex.response.get("Error", {}).get("Code") or "ServiceException"
        status = ex.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        error = f"Lambda.{code}"
        cause = (
            f"{ex.response.get('Error', {}).get('Message', '')} (Service: AWSLambda; "
            f"Status Code: {status}; Error Code: {code})"
        )
        return FailureEvent(
            env=env,
            error_name=CustomErrorName(error),
            event_type=HistoryEventType.LambdaFunctionFailed,
            event_details=EventDetails(
                lambdaFunctionFailedEventDetails=LambdaFunctionFailedEventDetails(
                    error=error, cause=cause
                )
            ),
        )
    return _strict_task_from_error(self, env, ex)


StateTaskLambda._from_error = _lambda_api_error


# Rule 7. Retry as Step Functions computes it: each retry waits IntervalSeconds times BackoffRate
# per attempt, capped at MaxDelaySeconds ("a value greater than 0 and less than 31622401"; moto
# accepted 31622401), FULL jitter a uniform random part of that (moto does both, and refuses the
# other out-of-range fields and JitterStrategy values other than FULL and NONE at
# CreateStateMachine). https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html
# (Retrying after an error). An EXPRESS execution ends at its 5 minutes whatever it is doing, a
# Retry's wait included (moto checked only when a state is entered): a wait that would outlast it
# fails the child with States.Timeout at the deadline.
# STRICT_MOTO_RETRY_SCALE (default 1) multiplies every wait, so a test of minutes of retries
# (a throttled reservation) runs in seconds: each wait is computed as AWS computes it, then slept
# scaled. The EXPRESS limit is not scaled (the functions' own time is not either).
RETRY_SCALE = float(os.environ.get("STRICT_MOTO_RETRY_SCALE", "1"))
from moto.stepfunctions.parser.asl.component.common.retry.max_attempts_decl import (  # noqa: E402
    MaxAttemptsOutcome,
)
from moto.stepfunctions.parser.asl.component.common.retry.max_delay_seconds_decl import (  # noqa: E402
    MaxDelaySecondsDecl,
)
from moto.stepfunctions.parser.asl.component.common.retry.retrier_decl import (  # noqa: E402
    RetrierDecl,
)
from moto.stepfunctions.parser.asl.component.common.retry.retrier_outcome import (  # noqa: E402
    RetrierOutcome,
)

_max_delay_init = MaxDelaySecondsDecl.__init__


def _strict_max_delay(self, max_delays_seconds=MaxDelaySecondsDecl.MAX_VALUE - 1):
    if not 0 < max_delays_seconds < 31622401:
        raise ValueError(
            "MaxDelaySeconds must be greater than 0 and less than 31622401, "
            f"got '{max_delays_seconds}'."
        )
    _max_delay_init(self, max_delays_seconds)


MaxDelaySecondsDecl.__init__ = _strict_max_delay


def _scaled_retrier(self, env):
    self.error_equals.eval(env)
    if not env.stack.pop():
        env.stack.append(RetrierOutcome.Skipped)
        return
    self.max_attempts.eval(env=env)
    if env.stack.pop() == MaxAttemptsOutcome.EXHAUSTED:
        env.stack.append(RetrierOutcome.Failed)
        return
    self.interval_seconds.eval(env=env)
    self.backoff_rate.eval(env=env)
    self.max_delay_seconds.eval(env=env)
    self.jitter_strategy.eval(env=env)
    wait = env.stack.pop() * RETRY_SCALE
    deadline = getattr(env.event_manager, "strict_deadline", None)
    if deadline is not None and time.monotonic() + wait > deadline:
        time.sleep(max(0.0, deadline - time.monotonic()))
        raise _fail(
            env,
            StatesErrorNameType.StatesTimeout,
            f"An EXPRESS execution runs at most {EXPRESS_SECONDS:.0f} seconds "
            "(a Retry's wait would have outlasted it).",
        )
    time.sleep(wait)
    env.stack.append(RetrierOutcome.Executed)


RetrierDecl._eval_body = _scaled_retrier


# Not a strictness rule: moto's `states:startExecution` integration (a port of LocalStack's)
# lost the key conversions LocalStack does with botocore's shapes, so `.sync:2` fails with
# KeyError 'StateMachineArn' ('ExecutionArn' on the way back). AWS takes the integration's
# parameters and returns its results in PascalCase ("StateMachineArn", "Input", "Name";
# "ExecutionArn", "Output", "Status").
# https://docs.aws.amazon.com/step-functions/latest/dg/connect-stepfunctions.html
def _camel_case_keys(d):
    for k in list(d):
        if k[:1].isupper():
            d[k[0].lower() + k[1:]] = d.pop(k)


def _pascal_case_keys(d):
    for k in list(d):
        if k[:1].islower():
            d[k[0].upper() + k[1:]] = d.pop(k)


_sfn_normalise_parameters = StateTaskServiceSfn._normalise_parameters
_sfn_eval_service_task = StateTaskServiceSfn._eval_service_task


def _sfn_parameters_as_boto_takes_them(
    self, parameters, boto_service_name=None, service_action_name=None
):
    _sfn_normalise_parameters(
        self,
        parameters,
        boto_service_name=boto_service_name,
        service_action_name=service_action_name,
    )
    _camel_case_keys(parameters)


def _sfn_response_as_aws_gives_it(
    self, response, boto_service_name=None, service_action_name=None
):
    _pascal_case_keys(response)


def _sfn_eval_service_task_pascal(self, env, *args, **kwargs):
    _sfn_eval_service_task(self, env, *args, **kwargs)
    _pascal_case_keys(env.stack[-1])


StateTaskServiceSfn._normalise_parameters = _sfn_parameters_as_boto_takes_them
StateTaskServiceSfn._normalise_response = _sfn_response_as_aws_gives_it
StateTaskServiceSfn._eval_service_task = _sfn_eval_service_task_pascal


# Rule 8 (a feature moto lacks, not a strictness rule). A Distributed Map's `ItemBatcher` runs one
# child per batch of items instead of one per item; the child's input is
# {"Items": [...], "BatchInput": {...}} ("If you use batching, Step Functions adds the items to an
# Items array"; BatchInput is fixed JSON, `.$` fields taken from the state's input). A batch holds
# at most MaxItemsPerBatch items and its input at most MaxInputBytesPerBatch bytes (at most
# 256 KiB, the default); an item whose batch alone is larger fails the Map with States.Runtime.
# https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itembatcher.html
# moto's grammar has no ItemBatcher: it is taken out of the definition before parsing and kept by
# state name (names are unique in a state machine), as the EXPRESS Maps are. Not modelled: an
# ItemSelector beside it (refused here, so no definition relies on a guess) and the *Path forms.
from moto.stepfunctions.parser.asl.utils.json_path import extract_json  # noqa: E402

BATCH_BYTES_LIMIT = 256 * 1024
_BATCHERS = {}
_parse_before_batchers = AmazonStateLanguageParser.parse


def _take_batchers(states):
    for name, state in states.items():
        batcher = state.pop("ItemBatcher", None)
        if batcher is not None:
            if "ItemSelector" in state or "Parameters" in state:
                raise ValueError(
                    f"strict_moto: Map '{name}' has an ItemBatcher and an ItemSelector; the rig "
                    "does not model both"
                )
            _BATCHERS[name] = batcher
        processor = state.get("ItemProcessor") or state.get("Iterator") or {}
        for inner in [processor] + list(state.get("Branches") or []):
            _take_batchers(inner.get("States") or {})


def _parse_with_batchers(definition):
    try:
        document = json.loads(definition)
    except ValueError:
        return _parse_before_batchers(definition)
    _take_batchers(document.get("States") or {})
    return _parse_before_batchers(json.dumps(document))


AmazonStateLanguageParser.parse = staticmethod(_parse_with_batchers)


def _batch_input(template, state_input):
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = extract_json(value, state_input)
            else:
                out[key] = _batch_input(value, state_input)
        return out
    if isinstance(template, list):
        return [_batch_input(v, state_input) for v in template]
    return template


def _size(value):
    return len(json.dumps(value, separators=(",", ":")).encode())


def _batches(env, batcher, items):
    max_items = batcher.get("MaxItemsPerBatch") or len(items) or 1
    max_bytes = min(batcher.get("MaxInputBytesPerBatch") or BATCH_BYTES_LIMIT, BATCH_BYTES_LIMIT)
    shared = None
    if "BatchInput" in batcher:
        shared = _batch_input(batcher["BatchInput"], env.states.get_input())

    def batch(chunk):
        b = {"Items": chunk}
        if shared is not None:
            b["BatchInput"] = shared
        return b

    batches, chunk = [], []
    for item in items:
        if chunk and (len(chunk) >= max_items or _size(batch(chunk + [item])) > max_bytes):
            batches.append(batch(chunk))
            chunk = []
        chunk.append(item)
        if _size(batch(chunk)) > max_bytes:
            raise _fail(
                env,
                StatesErrorNameType.StatesRuntime,
                f"An item's batch is {_size(batch(chunk))} bytes, over MaxInputBytesPerBatch "
                f"({max_bytes})",
            )
    if chunk:
        batches.append(batch(chunk))
    return batches


_map_run_before_batchers = DistributedIterationComponent._map_run


def _batched_map_run(self, env, eval_input):
    batcher = _BATCHERS.get(eval_input.state_name)
    if batcher is not None:
        items = env.stack.pop()
        env.stack.append(_batches(env, batcher, items if isinstance(items, list) else []))
    _map_run_before_batchers(self, env, eval_input)


DistributedIterationComponent._map_run = _batched_map_run


# ECR behaviours moto lacks (the archive storage class, DescribeRepositories paging): ecr_gaps.py.
sys.path.insert(0, __import__("os").path.dirname(__file__))
import ecr_gaps  # noqa: E402,F401

# S3's bucket owner condition (ExpectedBucketOwner), which moto ignores: s3_gaps.py.
import s3_gaps  # noqa: E402,F401


def _seed_receipt_key(arn):
    """The rig deployment's receipt key (`receiptKeyArn` in cdk/test/config.iam.json): an
    ECC_NIST_P256 SIGN_VERIFY key with the ARN the deployment names. moto gives keys random ids,
    and the IAM check needs the synthesized policy's resource, so the key is made with moto's own
    `create_key` and given that id before the server starts."""
    from moto.kms.models import kms_backends

    _, partition, _, region, account, resource = arn.split(":", 5)
    key_id = resource.split("/", 1)[1]
    backend = kms_backends[account][region]
    key = backend.create_key(None, "SIGN_VERIFY", "ECC_NIST_P256", "rig receipts", None)
    del backend.keys[key.id]
    key.id = key_id
    key.arn = arn
    backend.keys[key_id] = key


if __name__ == "__main__":
    from moto.server import main

    if os.environ.get("STRICT_MOTO_RECEIPT_KEY"):
        _seed_receipt_key(os.environ["STRICT_MOTO_RECEIPT_KEY"])

    main(sys.argv[1:])
