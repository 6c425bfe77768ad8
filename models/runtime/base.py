"""The runtime interface every backend implements, and the backend names.

No third-party imports: the agent and the server import this to type their
code without loading ONNX Runtime or TensorRT.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend", "Runtime"]


class Backend(str, Enum):
    AUTO = "auto"  # TensorRT for engine files, ONNX Runtime for ONNX files
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@runtime_checkable
class Runtime(Protocol):
    """One loaded model file: a single image input, named outputs."""

    input_name: str
    output_names: tuple[str, ...]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch (the network input, batch dim first); every output by name."""

    def close(self) -> None:
        """Release the model's memory; ``run`` fails afterwards."""
