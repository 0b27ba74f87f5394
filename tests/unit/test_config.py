"""ExporterConfig refuses, at construction, every setting that could only fail later."""

from __future__ import annotations

import pytest

from virk_exporter.config import ExporterConfig


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"store": "s3://Bad_Bucket/prod"}, "not a valid S3 bucket name"),
        ({"store": "s3://ab/prod"}, "not a valid S3 bucket name"),
        ({"store": "s3://my..bucket"}, "not a valid S3 bucket name"),
        ({"store": "s3://192.168.1.10"}, "not a valid S3 bucket name"),
        ({"store": "s3:///prefix"}, "names no bucket"),
        ({"store": "s3://bucket/pre fix"}, "the prefix may use only"),
        ({"store": "gs://bucket"}, "unsupported store URL"),
        ({"store": ""}, "store must be"),
        ({"link_expiry_s": 8 * 24 * 3600}, "link_expiry_s must lie in 1..604800"),
        ({"link_expiry_s": 0}, "link_expiry_s must lie in 1..604800"),
        ({"link_expiry_s": -5}, "link_expiry_s must lie in 1..604800"),
        ({"webhook_max_bytes": 0}, "webhook_max_bytes must be a positive number"),
        ({"bundle_frames": -1}, "bundle_frames must be a positive number"),
        ({"incident_queue": 0}, "incident_queue must be a positive number"),
        ({"http_request_timeout_s": 0}, "http_request_timeout_s must be a positive number"),
        ({"queue_bytes": True}, "queue_bytes must be a positive number"),
        ({"jpeg_quality": 101}, "jpeg_quality must lie in 1..100"),
        ({"record_format": "gif"}, "record_format must be one of"),
        ({"peers": {"b": "10.0.0.2:9400"}}, "must be an http(s):// base URL"),
    ],
)
def test_bad_settings_are_refused_at_construction(changes, message):
    with pytest.raises(ValueError) as caught:
        ExporterConfig(model="m", **changes)
    assert message in str(caught.value)


@pytest.mark.parametrize("store", ["s3://virk-incidents/prod/cam", "s3://a.b-c", "file:///tmp/x", "relative/dir"])
def test_good_stores_pass(store):
    assert ExporterConfig(model="m", store=store, link_expiry_s=7 * 24 * 3600).store == store
