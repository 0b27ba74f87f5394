"""Small helpers shared by the tests."""

import importlib.util
from importlib.metadata import PackageNotFoundError, distribution

import pytest
from prometheus_client.parser import text_string_to_metric_families


def require_bench_material(modules: tuple[str, ...], distributions: tuple[str, ...] = ()) -> None:
    """Fail, never skip, without the evaluation material (the ``bench`` extra and the clips):
    ``make test`` installs it, as it installs the servers, so a missing part is a broken setup."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    for name in distributions:
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run the README's test command (make test), which installs them (benchmarks/setup_bench.sh)", pytrace=False)


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
