"""The ExecuTorch backend, an optional add-on to the device runtime (the `[executorch]` extra).

ExecuTorch's Python bindings take and return torch tensors (executorch 1.5 has no numpy path), so this backend
needs torch and therefore lives outside device/runtime/, which is torch-free. `device.runtime.artifact` imports it
only when a .pte artifact is loaded; the ONNX backend needs none of it. A native runner would remove the torch need.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from device.runtime.backend import _Backend, _check_spec, check_manifest_shape
from shared.errors import ManifestError
from shared.records import ModelManifest, TensorSpec

_ET_DTYPES = {3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64"}  # c10::ScalarType codes


class ExecuTorchReranker(_Backend):
    """ExecuTorch backend (`executorch.runtime`, lazily imported; its bindings bring torch with them)."""

    runtime_name = "ExecuTorch"

    def __init__(self, path: str | Path, manifest: ModelManifest):
        try:
            from executorch.runtime import Runtime
        except ImportError as exc:
            raise ManifestError(f"{path}: the ExecuTorch backend needs `pip install lsc4rec[executorch]` ({exc})") from None
        check_manifest_shape(manifest)
        try:
            program = Runtime.get().load_program(Path(path))
            self._method = program.load_method("forward")
        except Exception as exc:  # the runtime raises untyped errors for a broken program
            raise ManifestError(f"{path}: ExecuTorch cannot load the program ({exc})") from None
        meta = self._method.metadata
        if meta.num_inputs() != 2:
            raise ManifestError(f"{path}: program has {meta.num_inputs()} inputs, manifest declares 2")
        for i, spec in enumerate(manifest.inputs):
            info = meta.input_tensor_meta(i)
            self._check_planned(path, spec, _ET_DTYPES.get(info.dtype(), str(info.dtype())), info.sizes())
        out = meta.output_tensor_meta(0)
        self._check_planned(path, manifest.outputs[0], _ET_DTYPES.get(out.dtype(), str(out.dtype())), out.sizes())
        self.manifest = manifest

    @staticmethod
    def _check_planned(path, spec: TensorSpec, dtype: str, sizes) -> None:
        # .pte programs have no tensor names and report the upper bound of dynamic dims
        shape = [s if isinstance(w, int) else w for s, w in zip(sizes, spec.shape)]
        _check_spec(f"{path}: tensor", spec, spec.name, dtype, shape if len(sizes) == len(spec.shape) else sizes)

    def _run(self, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
        return self._method.execute([torch.from_numpy(hist), torch.from_numpy(cand)])[0].detach().numpy()
