"""The demo and its material: photographs, the project's own corruptions, `virk-exporter demo`.

`virk_exporter.demo:predict` (the demo's monitored model, named by stored bundles' replay) is
resolved lazily so that importing the photo or corruption modules does not start the demo's stack.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "predict":
        from virk_exporter.demo.app import predict

        return predict
    raise AttributeError(f"module 'virk_exporter.demo' has no attribute {name!r}")
