"""The rank protocol: every message survives the wire, and anything else is refused with a clear error."""

import json

import pytest

from shardfuzz.case import FSDP2, SGD, Case, Linear, Model, Sequential, Side, to_dict
from shardfuzz.executor import messages
from shardfuzz.executor.fold import report_of
from shardfuzz.executor.messages import (
    CaseReport,
    Failed,
    ProtocolError,
    Ready,
    Reform,
    Reset,
    RunCase,
    Stop,
    decode,
    encode,
)
from shardfuzz.verdict import RankError, RankReport, converter

CASE = Case(
    model=Model(3, Sequential([Linear(5), Linear(2)])),
    save=Side(FSDP2(), (2,)),
    load=Side(FSDP2(), (2,)),
    optimizer=SGD(),
    steps=1,
)
REPORT = RankReport(1, error=RankError(1, "load", "RuntimeError", "boom", "Traceback ..."), timings={"save": 0.5})

EVERY_KIND = [
    RunCase(to_dict(CASE), "/dev/shm/case"),
    RunCase(to_dict(CASE), "/tmp/cross", phase="save"),
    Reset("/dev/shm/shardfuzz-pool-1-x/store-1"),
    Reform(),
    Stop(),
    Ready(3),
    Failed(0, "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'x'\n"),
    CaseReport(converter.unstructure(REPORT)),
]


def test_every_kind_of_message_is_listed():
    kinds = {type(message) for message in EVERY_KIND}
    assert kinds == set(messages._KINDS.values())
    assert len({kind.op for kind in kinds}) == len(kinds)


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_the_wire(message):
    data = encode(message)
    assert isinstance(data, bytes)
    assert json.loads(data)["op"] == message.op
    assert decode(data) == message
    assert decode(data.decode()) == message  # torchrun's store holds text


def test_a_case_message_keeps_the_wire_form_the_ranks_read():
    data = json.loads(encode(RunCase(to_dict(CASE), "/ckpt", "load")))
    assert data == {"op": "case", "case": to_dict(CASE), "checkpoint_dir": "/ckpt", "phase": "load"}


def test_a_case_report_structures_back_into_the_rank_report():
    reply = decode(encode(CaseReport(converter.unstructure(REPORT))))
    assert reply.raised
    assert report_of(1, reply) == REPORT
    assert not CaseReport(converter.unstructure(RankReport(0))).raised


def test_a_reply_that_is_no_report_is_that_ranks_error():
    report = report_of(2, Ready(2))
    assert report.error is not None and report.error.type == "BadReport"
    assert "instead of its report" in report.error.message


@pytest.mark.parametrize(
    "data, says",
    [
        (b'{"op": "launch", "case": {}}', "unknown message kind 'launch': the rank protocol has case, failed, "),
        (b'{"case": {}}', "no 'op'"),
        (b'["stop"]', "no 'op'"),
        (b"stop", "not JSON"),
        (b'{"op": "reset"}', "'reset' message whose fields do not fit Reset"),
        (b'{"op": "stop", "now": true}', "'stop' message whose fields do not fit Stop"),
    ],
)
def test_anything_else_is_refused_saying_what_is_wrong(data, says):
    with pytest.raises(ProtocolError) as refused:
        decode(data)
    assert says in str(refused.value)


def test_only_messages_are_encoded():
    with pytest.raises(ProtocolError, match="not a message of the rank protocol"):
        encode({"op": "stop"})
