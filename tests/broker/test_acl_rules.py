"""ACL file semantics used by the embedded broker (mosquitto's, for the subset we write)."""

from __future__ import annotations

import pytest
from auxilio.broker.acl import Acl, filter_covered, topic_matches
from auxilio.broker.config import render_acl
from auxilio.errors import UsageError


@pytest.mark.parametrize(
    "pattern,topic,ok",
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("a/b", "a/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matches(pattern: str, topic: str, ok: bool) -> None:
    assert topic_matches(pattern, topic) is ok


@pytest.mark.parametrize(
    "pattern,sub,ok",
    [
        ("a/X/down", "a/X/down", True),
        ("a/X/down", "a/+/down", False),  # a wildcard would reach other devices
        ("a/X/down", "a/#", False),
        ("a/+/up", "a/+/up", True),
        ("a/+/up", "a/X/up", True),
        ("a/#", "a/+/b", True),
    ],
)
def test_filter_covered(pattern: str, sub: str, ok: bool) -> None:
    assert filter_covered(pattern, sub) is ok


def test_generated_acl_rules() -> None:
    acl = Acl.parse(render_acl("auxilio", "gateway"))
    dev, other = "0938-NKRT", "0000-0000"
    assert acl.may_publish(dev, dev, f"auxilio/v1/{dev}/up")
    assert acl.may_publish(dev, dev, f"auxilio/v1/{dev}/status")
    assert not acl.may_publish(dev, dev, f"auxilio/v1/{other}/up")
    assert not acl.may_publish(dev, dev, f"auxilio/v1/{dev}/down")
    assert acl.may_subscribe(dev, dev, f"auxilio/v1/{dev}/down")
    assert not acl.may_subscribe(dev, dev, "auxilio/v1/+/down")
    assert not acl.may_receive(dev, dev, f"auxilio/v1/{other}/down")
    assert acl.may_subscribe("gateway", "gw", "auxilio/v1/+/up")
    assert acl.may_publish("gateway", "gw", f"auxilio/v1/{dev}/down")
    assert not acl.may_publish("gateway", "gw", f"auxilio/v1/{dev}/up")
    # Attend requests: operators write, the gateway reads, devices do neither.
    assert acl.may_publish("operator", "op", "auxilio/c4/attend")
    assert acl.may_subscribe("gateway", "gw", "auxilio/c4/attend")
    assert not acl.may_publish(dev, dev, "auxilio/c4/attend")
    # Self-test requests (gateway/selftest.py): the same shape, least privilege.
    assert acl.may_publish("operator", "op", "auxilio/c4/selftest")
    assert acl.may_subscribe("operator", "op", "auxilio/c4/selftest/result/st-1")
    assert not acl.may_publish("operator", "op", "auxilio/c4/selftest/result/st-1")
    assert acl.may_subscribe("gateway", "gw", "auxilio/c4/selftest")
    assert acl.may_publish("gateway", "gw", "auxilio/c4/selftest/result/st-1")
    assert not acl.may_publish(dev, dev, "auxilio/c4/selftest")
    assert not acl.may_subscribe(dev, dev, "auxilio/c4/selftest/result/+")
    assert not acl.may_publish("operator", "op", f"auxilio/v1/{dev}/down")
    assert not acl.may_subscribe("operator", "op", "auxilio/v1/+/up")
    # A user name that would change a topic's shape gets no pattern rights.
    assert not acl.may_publish("x/#", "c", "auxilio/v1/x/#/up")
    assert not acl.may_publish(None, "c", "auxilio/v1/x/up")


@pytest.mark.parametrize("text", ["topic read a/b", "user\n", "pattern sometimes a/b", "include x"])
def test_bad_acl_lines(text: str) -> None:
    with pytest.raises(UsageError):
        Acl.parse(text)
