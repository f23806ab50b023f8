"""Classifying an attention mask by evaluating the subgraph that builds it.

Exporters build masks in many ways (transformers 5 uses vmapped index arithmetic, GatherND and
bitwise And; older code uses triu, Where or arithmetic on ``1 - mask``), and each release changes
them, so a structural match of the mask subgraph would break with every version. Instead the
*cone* of the mask value (every node between it and the graph inputs) is cut out into a small
model and run in ONNX Runtime on probe inputs: batches with all-ones, right-padded, left-padded
and holed 2-D attention masks, several query lengths and, where the model has a KV cache,
several past lengths. The resulting allowed-key patterns are compared with the candidate
classes (none, padding, causal, causal + padding, sliding window with or without padding);
the mask is given the most specific class that matches *every* probe, and otherwise stays an
explicit bias (:attr:`MaskKind.BIAS`), which every lowering supports exactly.

The probes are a test, not a proof: they pin the class on shapes and paddings that exercise
each candidate's distinguishing cells (a left-padded row separates padding from causal; a
holed row separates "prefix length" from per-key padding; a sequence longer than any window
up to 32 separates causal from sliding). A mask built from the *values* of other inputs
(input_ids == pad id, say) fails them and stays a bias.
"""

from __future__ import annotations

__all__ = ["MaskClassifier", "MaskInfo", "MaskKind", "MaskTerm"]

import dataclasses
import enum
import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

logger = logging.getLogger(__name__)

_NEG_THRESHOLD = -1e4
"""Additive mask entries at or below this are 'masked' (fp16 finfo.min is -65504; HF uses
finfo.min; older code -10000)."""

_MAX_CONE_NODES = 5000


class MaskKind(enum.Enum):
    NONE = "none"
    PADDING = "padding"
    CAUSAL = "causal"
    CAUSAL_PADDING = "causal+padding"
    SLIDING = "sliding-window"
    SLIDING_PADDING = "sliding-window+padding"
    BIAS = "bias"

    @property
    def causal(self) -> bool:
        return self in (MaskKind.CAUSAL, MaskKind.CAUSAL_PADDING, MaskKind.SLIDING, MaskKind.SLIDING_PADDING)

    @property
    def padding(self) -> bool:
        return self in (MaskKind.PADDING, MaskKind.CAUSAL_PADDING, MaskKind.SLIDING_PADDING)


@dataclasses.dataclass(frozen=True)
class MaskTerm:
    """One way a mask enters the scores: ``scores + value`` (additive) or
    ``Where(value, scores, fill)`` (boolean, True = attend)."""

    value: ir.Value
    boolean: bool


@dataclasses.dataclass(frozen=True)
class MaskInfo:
    kind: MaskKind
    window: int | None = None
    """Sliding window w: query at absolute position p sees keys in (p - w, p]."""
    attention_mask: ir.Value | None = None
    """The 2-D (batch, total length) graph input the padding comes from."""
    note: str = ""
    """Why the class is what it is (shown by ``inspect``)."""


@dataclasses.dataclass(frozen=True)
class _Probe:
    batch: int
    seq: int
    past: int
    pattern: str  # ones | right | left | holes


_PROBES = (
    _Probe(2, 6, 0, "ones"),
    _Probe(2, 6, 0, "right"),
    _Probe(2, 6, 0, "left"),
    _Probe(2, 7, 0, "holes"),
    _Probe(2, 40, 0, "ones"),
    _Probe(2, 40, 0, "holes"),
    _Probe(2, 1, 5, "ones"),
    _Probe(2, 1, 6, "left"),
    _Probe(2, 3, 38, "holes"),
    _Probe(1, 4, 3, "right"),
)


def _mask_values(probe: _Probe, total: int, rng: np.random.Generator) -> np.ndarray:
    m = np.ones((probe.batch, total), np.int64)
    if probe.pattern == "right":
        m[-1, total - min(2, total - 1) :] = 0
    elif probe.pattern == "left":
        m[-1, : min(3, total - 1)] = 0
    elif probe.pattern == "holes":
        m = (rng.random((probe.batch, total)) < 0.7).astype(np.int64)
        m[:, -1] = 1  # every row attends to something
        m[0] = 1
    return m


class _Role(enum.Enum):
    MASK = "mask"
    TOKENS = "tokens"  # (batch, seq) ids / positions
    POSITIONS = "positions"  # 1-D cache_position-like
    PAST = "past"  # (batch, heads, past, head_size)
    OTHER = "other"


def _role(value: ir.Value) -> _Role:
    name = (value.name or "").lower()
    rank = len(value.shape) if value.shape is not None else -1
    floating = value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
    if rank == 2 and "mask" in name:
        return _Role.MASK
    if rank == 2 and not floating:
        return _Role.TOKENS
    if rank == 1 and not floating and "position" in name:
        return _Role.POSITIONS
    if rank == 4 and floating and ("past" in name or "cache" in name or "key" in name or "value" in name):
        return _Role.PAST
    return _Role.OTHER


class MaskClassifier:
    """Classifies mask values of one model; results are cached per value (every layer of a
    model usually shares one mask)."""

    def __init__(self, model: ir.Model) -> None:
        self._model = model
        self._order = {node: i for i, node in enumerate(model.graph)}
        self._cache: dict[tuple[int, ...], MaskInfo] = {}

    def classify(self, terms: Sequence[MaskTerm]) -> MaskInfo:
        if not terms:
            return MaskInfo(MaskKind.NONE, note="no mask applied to the scores")
        key = tuple(id(t.value) for t in terms)
        if key not in self._cache:
            self._cache[key] = self._classify(terms)
        return self._cache[key]

    # ---- evaluation ----------------------------------------------------------------------
    def _cone(self, outputs: Sequence[ir.Value]) -> tuple[list[ir.Node], list[ir.Value], list[ir.Value]] | str:
        graph = self._model.graph
        graph_inputs = set(graph.inputs)
        nodes: set[ir.Node] = set()
        inputs: dict[str, ir.Value] = {}
        consts: dict[str, ir.Value] = {}
        stack = list(outputs)
        seen: set[int] = set()
        while stack:
            value = stack.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if value in graph_inputs:
                inputs[value.name or ""] = value
                continue
            if value.const_value is not None and value.producer() is None:
                consts[value.name or ""] = value
                continue
            node = value.producer()
            if node is None:
                return f"mask value '{value.name}' has no producer and no value"
            if node.graph is not graph:
                return f"mask depends on '{value.name}' computed inside a subgraph"
            if any(isinstance(a.value, ir.Graph) for a in node.attributes.values()):
                return f"mask subgraph contains a control-flow node ({node.op_type})"
            if node in nodes:
                continue
            nodes.add(node)
            if len(nodes) > _MAX_CONE_NODES:
                return f"mask subgraph has more than {_MAX_CONE_NODES} nodes"
            stack.extend(v for v in node.inputs if v is not None)
        ordered = sorted(nodes, key=lambda n: self._order.get(n, 0))
        return ordered, sorted(inputs.values(), key=lambda v: v.name or ""), list(consts.values())

    def _probe_model(self, outputs: Sequence[ir.Value]) -> tuple[onnx.ModelProto, list[ir.Value]] | str:
        cone = self._cone(outputs)
        if isinstance(cone, str):
            return cone
        nodes, inputs, consts = cone
        graph = onnx.GraphProto(name="mask_probe")
        graph.node.extend(ir.serde.serialize_node(n) for n in nodes)
        for c in consts:
            assert c.const_value is not None
            t = ir.serde.serialize_tensor(c.const_value)
            t.name = c.name or ""
            graph.initializer.append(t)
        for v in inputs:
            graph.input.append(ir.serde.serialize_value(v))
        for v in outputs:
            graph.output.append(onnx.helper.make_tensor_value_info(v.name or "", int(v.dtype or 0), None))
        model = onnx.helper.make_model(
            graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self._model.opset_imports.items()]
        )
        model.ir_version = self._model.ir_version
        return model, inputs

    def _feeds(
        self, inputs: Sequence[ir.Value], probe: _Probe, rng: np.random.Generator
    ) -> dict[str, np.ndarray] | str:
        roles = {v.name: _role(v) for v in inputs}
        has_past = any(r == _Role.PAST for r in roles.values())
        total = probe.seq + probe.past
        want: dict[_Role, tuple[int | None, ...]] = {
            _Role.MASK: (probe.batch, total),
            _Role.TOKENS: (probe.batch, probe.seq),
            _Role.POSITIONS: (probe.seq,),
            _Role.PAST: (probe.batch, None, probe.past, None),
        }
        symbols: dict[str, int] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for v in inputs:
            role = roles[v.name]
            if role == _Role.OTHER or v.shape is None:
                return f"mask depends on input '{v.name}' of unknown role"
            dims: list[int] = []
            for d, w in zip(v.shape, want[role], strict=True):
                if isinstance(d, int):
                    if w is not None and d != w:
                        return "static dims"
                    dims.append(d)
                    continue
                if w is None:
                    return f"input '{v.name}' has a dynamic head dimension"
                name = d.value
                if name is not None:
                    if symbols.setdefault(name, w) != w:
                        return "conflict"  # e.g. one symbol for query and total length: past must be 0
                dims.append(w)
            shapes[v.name or ""] = tuple(dims)
        if probe.past and not has_past and not any(r == _Role.MASK for r in roles.values()):
            return "conflict"
        feeds: dict[str, np.ndarray] = {}
        mask = _mask_values(probe, total, rng)
        for v in inputs:
            name, role = v.name or "", roles[v.name]
            dtype = ir.DataType(v.dtype).numpy() if v.dtype is not None else np.int64
            if role == _Role.MASK:
                feeds[name] = mask.astype(dtype)
            elif role == _Role.TOKENS:
                pos = np.arange(probe.past, total)
                feeds[name] = (
                    np.broadcast_to(pos, shapes[name]).astype(dtype)
                    if "position" in name.lower()
                    else (np.zeros(shapes[name], dtype))
                )
            elif role == _Role.POSITIONS:
                feeds[name] = np.arange(probe.past, total).astype(dtype)
            else:
                feeds[name] = rng.standard_normal(shapes[name]).astype(dtype)
        return feeds

    def _classify(self, terms: Sequence[MaskTerm]) -> MaskInfo:
        import onnxruntime as ort

        built = self._probe_model([t.value for t in terms])
        if isinstance(built, str):
            return MaskInfo(MaskKind.BIAS, note=f"kept as an explicit bias: {built}")
        proto, inputs = built
        masks = [v for v in inputs if _role(v) == _Role.MASK]
        attention_mask = masks[0] if len(masks) == 1 else None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own exception types: any failure means "cannot probe"
            return MaskInfo(MaskKind.BIAS, note=f"kept as an explicit bias: mask subgraph does not load ({e})")
        rng = np.random.default_rng(0)
        samples: list[tuple[np.ndarray, np.ndarray | None, int]] = []  # allowed (B,S,T), mask (B,T), past
        for probe in _PROBES:
            feeds = self._feeds(inputs, probe, rng)
            if isinstance(feeds, str):
                if feeds in ("conflict", "static dims"):
                    continue
                return MaskInfo(MaskKind.BIAS, note=f"kept as an explicit bias: {feeds}")
            try:
                outs = session.run(None, feeds)
            except Exception as e:
                if probe.past:
                    continue  # shapes the model cannot take (e.g. no cache)
                return MaskInfo(MaskKind.BIAS, note=f"kept as an explicit bias: mask subgraph fails on probes ({e})")
            allowed = self._allowed(outs, terms, probe.batch)
            if isinstance(allowed, str):
                return MaskInfo(MaskKind.BIAS, note=f"kept as an explicit bias: {allowed}")
            mask = feeds[attention_mask.name] if attention_mask is not None and attention_mask.name else None
            s, t = allowed.shape[1:]
            if mask is not None and mask.shape[1] != t:
                return MaskInfo(MaskKind.BIAS, note="kept as an explicit bias: the 2-D mask does not cover the keys")
            samples.append((allowed, None if mask is None else mask.astype(bool), t - s))
        if not samples:
            return MaskInfo(MaskKind.BIAS, note="kept as an explicit bias: no probe shape fits the mask's inputs")
        return self._match(samples, attention_mask)

    def _allowed(self, outs: Sequence[np.ndarray], terms: Sequence[MaskTerm], batch: int) -> np.ndarray | str:
        allowed: np.ndarray | None = None
        for out, term in zip(outs, terms, strict=True):
            a = np.asarray(out)
            if a.ndim < 2 or a.ndim > 4:
                return f"mask of rank {a.ndim}"
            a = a.reshape((1,) * (4 - a.ndim) + a.shape)
            if term.boolean:
                cur = a.astype(bool)
            else:
                af = a.astype(np.float64)
                masked = af <= _NEG_THRESHOLD
                if not np.all(masked | (af == 0)):
                    return "additive values other than 0 and large negatives (a positional bias)"
                cur = ~masked
            if cur.shape[1] != 1 and not np.all(cur == cur[:, :1]):
                return "the mask differs between heads"
            cur = cur[:, 0]
            cur = np.broadcast_to(cur, (batch,) + cur.shape[1:])
            allowed = cur if allowed is None else allowed & np.broadcast_to(cur, allowed.shape)
        assert allowed is not None
        return allowed

    @staticmethod
    def _candidate(
        kind: MaskKind, window: int | None, shape: tuple[int, ...], mask: np.ndarray | None, past: int
    ) -> np.ndarray:
        b, s, t = shape
        i = np.arange(s)[:, None] + past
        j = np.arange(t)[None, :]
        allowed = np.ones((b, s, t), bool)
        if kind.causal:
            allowed &= j <= i
        if window is not None:
            allowed &= j > i - window
        if kind.padding:
            assert mask is not None
            allowed &= mask[:, None, :]
        return allowed

    def _match(
        self, samples: list[tuple[np.ndarray, np.ndarray | None, int]], attention_mask: ir.Value | None
    ) -> MaskInfo:
        window = None
        for allowed, mask, past in samples:  # a window shows as rows seeing fewer keys than causal
            if mask is not None and not mask.all():
                continue
            s = allowed.shape[1]
            counts = allowed.sum(-1)
            causal_counts = np.arange(s) + past + 1
            if np.any(counts < causal_counts[None, :]) and np.all(counts >= 1):
                window = int(counts.max())
                break
        candidates: list[tuple[MaskKind, int | None]] = [(MaskKind.NONE, None), (MaskKind.CAUSAL, None)]
        if window is not None:
            candidates.append((MaskKind.SLIDING, window))
        if attention_mask is not None:
            candidates += [(MaskKind.PADDING, None), (MaskKind.CAUSAL_PADDING, None)]
            if window is not None:
                candidates.append((MaskKind.SLIDING_PADDING, window))
        for kind, w in candidates:
            if all(
                np.array_equal(allowed, self._candidate(kind, w, allowed.shape, mask, past))
                for allowed, mask, past in samples
            ):
                pasts = sorted({p for _, _, p in samples})
                note = f"{kind.value}" + (f" (window {w})" if w else "") + f", probed at past lengths {pasts}"
                return MaskInfo(kind, w, attention_mask if kind.padding else None, note)
        return MaskInfo(MaskKind.BIAS, attention_mask=None, note="kept as an explicit bias: a custom mask pattern")
