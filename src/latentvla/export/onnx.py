"""ONNX export of a planner run (``latentvla export onnx``), checked against PyTorch before the file is written.

Graph contract (so a deployment runtime needs no Python from this package):

- inputs, positional, in :func:`input_keys` order and with the dtypes ``FeatureBuilder`` / the planner cache
  store (``latentvla.planner.features.FEATURE_DTYPES``): ``ego_status`` float32 (B, 8), ``lidar_bev`` float32
  (B, 2, P, P), then ``camera_s16`` / ``camera_s32`` float16 (EfficientNet-Lite0 features) or ``camera`` uint8
  (``backbone: none``). ``ego-mlp`` reads ``ego_status`` only. Shapes come from ``feature_shapes(cfg.features)``;
  only the batch axis (``batch``) is dynamic. A fused ("full") run also takes ``teacher_embeddings`` float16
  (B, T, D): the VLA teacher is not part of the graph. The distilled student needs no teacher input.
- outputs: ``trajectory`` float32 (B, 8, 3); iPad adds ``proposals`` (B, N, 8, 3) and ``selection_score`` (B, N).
- the model file's metadata props record the host and the input / output order (``latentvla.*``).

Exporter: the TorchScript tracer (``torch.onnx.export(..., dynamo=False)``): it needs only ``onnx`` and
``onnxruntime`` (the ``[export]`` extra), not ``onnxscript``. One planner op does not trace with a dynamic batch:
``F.adaptive_avg_pool2d`` in the perception trunk, whose input spatial size the tracer loses after a resize. During
the export only, :func:`_export_friendly` gives ``latentvla.planner.backbones`` an exact replacement (two constant
averaging-matrix products); the planner modules themselves are untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.runtime.io import atomic_write_bytes

EXTRA_HINT = "install the [export] extra: pip install -e '.[export]'"
TOLERANCE = 1e-4  # max |onnxruntime - torch| on the trajectory (metres / radians)
VERIFY_BATCH = 2  # a batch size other than the traced one, so the dynamic axis is exercised
HOST_OUTPUTS: dict[str, tuple[str, ...]] = {"ipad": ("trajectory", "proposals", "selection_score")}
# torch >= 2.5 has both exporters (dynamo by default from 2.9); older ones only the TorchScript one
_LEGACY = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def _require_runtime():
    """The ``onnx`` and ``onnxruntime`` modules, or a ValueError saying which extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ValueError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): {EXTRA_HINT}") from None
    return onnx, onnxruntime


def model_path(run: str | Path) -> Path:
    """``RUN/model.safetensors`` for a run directory (a weights file is accepted as is)."""
    from latentvla.planner.train import MODEL_FILE

    run = Path(run)
    if run.is_dir():
        return run / MODEL_FILE
    if run.is_file():
        return run
    raise FileNotFoundError(f"planner run {run} not found (pass a `latentvla planner train --out` directory)")


def input_specs(cfg) -> dict[str, tuple[tuple[int, ...], type]]:
    """{input: (shape without batch, numpy dtype)} in graph order: the keys the host reads (``ego-mlp``:
    ``ego_status`` only), then, for a fused ("full") run, the teacher's ``teacher_embeddings``."""
    from latentvla.planner.features import FEATURE_DTYPES, feature_keys, feature_shapes
    from latentvla.planner.fusion import TEACHER_KEY

    shapes = feature_shapes(cfg.features)
    keys = ("ego_status",) if cfg.host == "ego-mlp" else feature_keys(cfg.features)
    specs = {k: (shapes[k], FEATURE_DTYPES[k]) for k in keys}
    fusion = getattr(cfg, "fusion", None)
    if fusion is not None and fusion.enabled:  # stored float16, as the teacher cache and the live agent feed it
        specs[TEACHER_KEY] = ((fusion.context_tokens, fusion.context_dim), np.float16)
    return specs


def input_keys(cfg) -> tuple[str, ...]:
    """The graph inputs, in order (see :func:`input_specs`)."""
    return tuple(input_specs(cfg))


def output_names(cfg) -> tuple[str, ...]:
    return HOST_OUTPUTS.get(cfg.host, ("trajectory",))


def random_features(cfg, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch shaped and typed like ``FeatureBuilder``'s output for ``cfg.features`` (only the graph's inputs):
    ego status and teacher embeddings ~ N(0, 1), LiDAR histogram in [0, 1], camera features in [0, 4) (float16),
    images any uint8."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in input_specs(cfg).items():
        shape = (batch, *shape)
        if key == "camera":
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif key in ("ego_status", "teacher_embeddings"):
            out[key] = rng.standard_normal(shape).astype(dtype)
        else:
            out[key] = (rng.random(shape) * (4.0 if key.startswith("camera") else 1.0)).astype(dtype)
    return out


class ExportWrapper(nn.Module):
    """Positional feature tensors (``keys`` order) -> the tuple of ``outputs``: ONNX graphs take no dicts."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.keys, self.outputs = model, keys, outputs

    def forward(self, *features: Tensor) -> tuple[Tensor, ...]:
        out = self.model(dict(zip(self.keys, features)))
        return tuple(out[name] for name in self.outputs)


def _average_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) rows averaging the bins of ``F.adaptive_avg_pool*`` (floor start, ceil end)."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Exact ``F.adaptive_avg_pool2d`` as constant matrix products (spatial sizes are static in the planners)."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
    return _average_matrix(h, oh).to(x) @ x @ _average_matrix(w, ow).t().to(x)


@contextlib.contextmanager
def _export_friendly() -> Iterator[None]:
    """Trace-time replacement of the trunk's ``F.adaptive_avg_pool2d`` (see the module docstring). Harmless to
    anything else running the trunk meanwhile: the replacement computes the same values."""
    from latentvla.planner import backbones

    original = getattr(backbones, "F", None)
    if original is not F:  # the trunk no longer pools through `F`: nothing to replace
        yield
        return
    proxy = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})
    proxy.adaptive_avg_pool2d = _adaptive_avg_pool2d
    backbones.F = proxy
    try:
        yield
    finally:
        backbones.F = original


def _trace(wrapper: ExportWrapper, example: tuple[Tensor, ...], opset: int) -> bytes:
    names = (*wrapper.keys, *wrapper.outputs)
    buf = io.BytesIO()
    with _export_friendly(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on static shape checks, the legacy-exporter notice
        torch.onnx.export(wrapper, example, buf, input_names=list(wrapper.keys),
                          output_names=list(wrapper.outputs), opset_version=opset,
                          dynamic_axes={n: {0: "batch"} for n in names}, do_constant_folding=True, **_LEGACY)
    return buf.getvalue()


def onnx_session(path: str | Path | bytes, threads: int | None = None, spin: bool = True
                 ) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """``run(features) -> {output: array}`` on onnxruntime's CPU provider. Extra feature keys are ignored (e.g.
    camera features for ``ego-mlp``) and arrays are cast to the graph's input dtypes; ``threads``: intra-op.
    ``spin=False`` stops idle pool threads busy-waiting after a call, which otherwise starves whatever runs next
    on a small CPU (e.g. PyTorch in an interleaved benchmark)."""
    _, ort = _require_runtime()
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    inputs = [(i.name, _ORT_DTYPES.get(i.type)) for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]

    def run(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n, _ in inputs if n not in features]
        if missing:
            raise ValueError(f"features lack {missing}; the graph takes {[n for n, _ in inputs]}")
        feed = {n: np.ascontiguousarray(features[n], dtype=dt) for n, dt in inputs}
        return dict(zip(outputs, sess.run(outputs, feed)))

    return run


def _with_metadata(onnx, data: bytes, cfg, keys: tuple[str, ...], outputs: tuple[str, ...]) -> bytes:
    proto = onnx.load_from_string(data)
    props = {"latentvla.host": cfg.host, "latentvla.inputs": ",".join(keys),
             "latentvla.outputs": ",".join(outputs)}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(run: str | Path, out: str | Path, opset: int = 17, batch: int = 1) -> dict:
    """Export the planner run ``run`` to ``out`` (.onnx), traced at ``batch`` with a dynamic batch axis.

    The graph is verified on onnxruntime against PyTorch on a random batch of ``VERIFY_BATCH`` *before* anything
    is written (max |diff| on ``trajectory`` <= ``TOLERANCE``), then written atomically; a failed check writes
    nothing. Returns {"inputs", "outputs", "max_abs_diff" (trajectory), "diffs" (every output), "opset",
    "bytes", "host", "path"}."""
    from latentvla.planner.checkpoint import load_planner, read_config

    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end with .onnx, got {out}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = model_path(run)
    try:  # a clear FileNotFoundError / ValueError (not a planner checkpoint) naming the run's file
        read_config(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as e:  # e.g. safetensors' header errors on a file that is not safetensors at all
        raise ValueError(f"{path} is not a planner checkpoint ({type(e).__name__}: {e})") from None
    onnx, _ = _require_runtime()
    model, cfg = load_planner(path)
    keys, outputs = input_keys(cfg), output_names(cfg)
    wrapper = ExportWrapper(model, keys, outputs).eval()  # eval: export restores the wrapper's mode afterwards
    example = tuple(torch.from_numpy(v) for v in random_features(cfg, batch, seed=0).values())
    data = _with_metadata(onnx, _trace(wrapper, example, opset), cfg, keys, outputs)

    check = random_features(cfg, VERIFY_BATCH, seed=1)
    got = onnx_session(data)(check)
    with torch.no_grad():
        want = wrapper.eval()(*(torch.from_numpy(v) for v in check.values()))
    diffs = {n: float(np.abs(got[n].astype(np.float64) - w.double().numpy()).max()) for n, w in zip(outputs, want)}
    if not diffs["trajectory"] <= TOLERANCE:
        raise ValueError(f"ONNX export of {run} does not match PyTorch: max |diff| on trajectory = "
                         f"{diffs['trajectory']:.3g} > {TOLERANCE} (opset {opset}); nothing written")
    atomic_write_bytes(out, data)
    return {"inputs": list(keys), "outputs": list(outputs), "max_abs_diff": diffs["trajectory"], "diffs": diffs,
            "opset": opset, "bytes": len(data), "host": cfg.host, "path": str(out)}


__all__ = ["export_onnx", "onnx_session", "input_keys", "input_specs", "output_names", "random_features",
           "model_path", "ExportWrapper", "EXTRA_HINT", "TOLERANCE"]
