"""Small helpers shared by the tests."""

from prometheus_client.parser import text_string_to_metric_families


def sample_value(text: str, name: str, **labels: str) -> float:
    """The summed value of the samples named ``name`` whose labels include ``labels`` (0.0 when absent)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def exposition(exporter) -> str:
    """The exporter's /metrics text, without HTTP."""
    return exporter.exposition()[0].decode()
