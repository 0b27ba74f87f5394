"""The webhook under hostile input and overload: every malformed body a 4xx with its reason,
alert storms bounded and answered so Alertmanager retries, accepted alerts journalled."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_webhook import REAL_PAYLOAD, FakeExporter, payload, post

from virk_exporter.incidents.http import intake_journal
from virk_exporter.incidents.webhook import make_alert_payload

ALERT = REAL_PAYLOAD["alerts"][0]


def with_alert(**changes) -> bytes:
    return payload(alerts=[{**ALERT, **changes}])


@pytest.mark.parametrize(
    "body,message",
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (with_alert(startsAt="9999-12-31T23:59:59-23:59"), "alerts[0].startsAt"),
        (payload(truncatedAlerts=10**4000).replace(b"1" + b"0" * 4000, b"9" * 900_000), "not valid JSON"),
        (payload(truncatedAlerts=-1), "truncatedAlerts must be a count"),
        (payload(truncatedAlerts=2**64), "truncatedAlerts must be a count"),
        (with_alert(fingerprint="deadbeef\n"), "fingerprint 'deadbeef\\n' must be"),
        (with_alert(startsAt=ALERT["startsAt"] + "\n"), "is not an RFC 3339"),
        (with_alert(labels={**ALERT["labels"], "source": "\ud800"}), "lone surrogate"),
        (with_alert(generatorURL={"a": 1}), "field 'generatorURL' must be str"),
        (payload(groupKey=[]), "field 'groupKey' must be str"),
    ],
    ids=["deep", "starts-overflow", "huge-int", "negative", "2**64", "fp-newline", "ts-newline", "surrogate", "url", "groupkey"],
)
def test_malformed_bodies_are_400_with_the_reason(tmp_path, body, message):
    exporter = FakeExporter(tmp_path)
    status, answer = post(exporter, body)
    assert status == 400, answer
    assert message in answer["error"]
    assert exporter.submitted == [] and len(intake_journal(exporter)) == 0


def _storm(n: int) -> bytes:
    alerts = [dict(ALERT, fingerprint=f"{i:016x}", startsAt=f"2026-11-26T01:{i // 60 % 60:02d}:{i % 60:02d}Z") for i in range(n)]
    return payload(alerts=alerts)


def test_too_many_alerts_in_one_notification_is_413_naming_the_fix(tmp_path):
    exporter = FakeExporter(tmp_path, webhook_max_bytes=8 * 2**20)  # the size limit is not what is tested
    status, answer = post(exporter, _storm(10_000))
    assert status == 413 and "max_alerts" in answer["error"] and "1000" in answer["error"]
    assert exporter.submitted == [] and len(intake_journal(exporter)) == 0
    assert exporter.metrics.errors.labels(exporter.model, "webhook_limit")._value.get() == 1


def test_a_full_intake_queue_takes_the_newest_and_answers_503_for_the_rest(tmp_path):
    exporter = FakeExporter(tmp_path, incident_queue=5)
    status, answer = post(exporter, _storm(8))
    assert status == 503 and "incident queue full" in answer["error"]
    newest = [f"{i:016x}" for i in (7, 6, 5, 4, 3)]
    assert answer["accepted"] == newest and sorted(answer["overflow"]) == [f"{i:016x}" for i in range(3)]
    assert [a.fingerprint for a in exporter.submitted[0].alerts] == newest
    assert len(intake_journal(exporter)) == 5
    assert exporter.metrics.errors.labels(exporter.model, "incident_overflow")._value.get() == 3
    # Alertmanager retries the same notification: the journalled ones take no new room.
    status, answer = post(exporter, _storm(8))
    assert status == 503 and answer["accepted"] == newest and len(intake_journal(exporter)) == 5
    # Once the worker has built them (it deletes their entries) the retry gets through.
    for alert in exporter.submitted[0].alerts:
        intake_journal(exporter).remove(alert)
    status, answer = post(exporter, _storm(8))
    assert status == 202 and len(answer["accepted"]) == 8 and len(intake_journal(exporter)) == 3


def test_an_alert_is_journalled_before_the_202_even_when_the_worker_is_down(tmp_path):
    exporter = FakeExporter(tmp_path)

    def broken(notification):
        raise BrokenPipeError(32, "Broken pipe")

    exporter.submit_alert = broken
    status, answer = post(exporter, payload())
    assert status == 202 and "journalled" in answer["note"]
    (entry,) = intake_journal(exporter).pending()
    assert entry.fingerprint == ALERT["fingerprint"] and entry.starts_at.stamp() == "20261126T010203.123456789Z"


# --- fuzzing -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
alert_fields = st.sampled_from(sorted(ALERT) + ["extra"])
payload_fields = st.sampled_from(sorted(REAL_PAYLOAD) + ["extra"])


@st.composite
def mutated_payloads(draw) -> bytes:
    body = json.loads(json.dumps(REAL_PAYLOAD))
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            body[draw(payload_fields)] = draw(json_values)
        elif isinstance(body.get("alerts"), list) and body["alerts"] and isinstance(body["alerts"][0], dict):
            body["alerts"][0][draw(alert_fields)] = draw(json_values | st.text(alphabet=st.characters(), max_size=40))
    text = json.dumps(body)
    if draw(st.booleans()):  # byte-level damage too
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5)) + text[cut:]
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=mutated_payloads() | st.binary(max_size=200))
def test_fuzzed_bodies_never_get_a_5xx(tmp_path, body):
    exporter = FakeExporter(tmp_path, incident_queue=10_000)  # room enough: overload is not what is fuzzed
    status, answer = post(exporter, body)
    assert status < 500, answer
    assert ("error" in answer) == (status >= 400)


def test_the_demo_payload_still_goes_through(tmp_path):
    exporter = FakeExporter(tmp_path)
    assert post(exporter, make_alert_payload(exporter.model))[0] == 202
