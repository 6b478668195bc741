"""Rewrites of exported ONNX graphs: the decoder's block Loop, and INT8 of the decoder's LSTMs.

How to call::

    block = build_decoder_block(onnx.load("decoder_step.onnx"))      # fp32 or quantized step
    quantize_decoder_step("fp32/decoder_step.onnx", "int8/decoder_step.onnx")          # per row
    quantize_decoder_step(src, dst, activations="tensor")   # ORT's quantize_dynamic (couples rows)

What to quantize in the decoder step, chosen by comparing the candidates on the single-step
graph (one thread, batch 1, per-tensor activations): time per step, and the frame error of one
step against fp32 from fp32's own states over an utterance:

* the LSTM matrices, per output channel (this recipe): the whole speed-up, with a smaller error
  than the same matrices per tensor;
* every MatMul/Gemm/Conv (ORT's quantize_dynamic): no faster, a larger error;
* the recurrent (hh) matrices only, or MatMulNBits 8-bit blocks with int8 math: far smaller
  errors, but most of the speed-up lost (the development CPU has no VNNI);
* MatMulNBits 4-bit blocks: as fast, a larger error.

The LSTM matrices hold nearly all of the step's weights: that is where its time goes.

Activations per *row*, not per tensor. ORT's dynamic quantization (DynamicQuantizeLinear) gives a
whole (B, K) activation one scale, so with B rows in a batch a row's numbers depend on its
neighbours' ranges (see tests/test_engines.py for the measured coupling). :func:`per_row_matmul`
quantizes each row with its own asymmetric uint8 scale and zero point, computed with plain ops,
multiplies with ``MatMulInteger`` (uint8 x int8, zero points 0) and corrects for the zero point
with the weights' precomputed column sums::

    s_r = (max_r - min_r) / 255,   m_r = round(min_r / s_r)      # per row, (B, 1)
    q   = clip(round(x / s_r) - m_r, 0, 255)  uint8               # x ~ s_r * (q + m_r)
    x @ W ~ s_r * w_scale * (q @ Wq + m_r * colsum(Wq))           # Wq int8, symmetric per channel

Every op is row-wise and the integer product is exact, so a row's output is the same in any batch
(bit-identical frames, solo and batched: tests/test_engines.py). At B=1 the error against fp32 is
that of the recipe above; the extra ops cost a little time per step (engines/onnx_backend.py).
ORT's contrib MatMulIntegerToFloat in place of MatMulInteger + Cast + Mul was no faster.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STATE_NAMES = ("attention_hidden", "attention_cell", "decoder_hidden", "decoder_cell",
               "attention_weights", "attention_weights_cum", "attention_context")
# Weights of the decoder's two LSTM cells, as our exporter names them (module parameter names).
_LSTM_WEIGHT = re.compile(r"(^|\.)(attention_rnn|decoder_rnn)\.weight_(ih|hh)$")
ACTIVATIONS = ("row", "tensor")


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def _const(name: str, value, dtype) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def build_decoder_block(step: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a batched decoder step graph (fp32 or quantized) in an ONNX Loop over a block of steps.

    Inputs:  block_masks (n, 2, B, 128), memory (B, T, 288), keys (B, T, 64), pad (B, T) bool,
             limit (B,) int64, threshold (B,) float32, init_prev_frame (B, 80),
             init_<state> (the 7 state tensors, as the step's)
    Outputs: last_frame (B, 80), last_<state> (after the last step run), frames (k, B, 80),
             gates (k, B) sigmoid(gate), alignments (k, B, T)

    Per-row stop: a carried ``done`` (B,) bool; after step i (0-based) a row is done when it was,
    or sigmoid(gate) > threshold, or i + 1 >= limit. The loop ends after the step where every row
    is done (or after n steps); rows that are done keep stepping until then (their extra outputs
    are ignored by the caller). One Run per block saves ONNX Runtime's and Python's per-call overhead."""
    g = step.graph
    ins = {v.name: v for v in g.input}
    outs = {v.name: v for v in g.output}
    body_nodes = [helper.make_node("Gather", ["block_masks", "blk_iter"], ["masks"], axis=0)]
    body_nodes += list(g.node)
    body_nodes += [
        helper.make_node("Sigmoid", ["gate_logit"], ["blk_gate"]),
        helper.make_node("Greater", ["blk_gate", "threshold"], ["blk_fired"]),
        _const("blk_one", 1, np.int64),
        helper.make_node("Add", ["blk_iter", "blk_one"], ["blk_next"]),
        helper.make_node("GreaterOrEqual", ["blk_next", "limit"], ["blk_over"]),
        helper.make_node("Or", ["blk_fired", "blk_over"], ["blk_stop"]),
        helper.make_node("Or", ["blk_done_in", "blk_stop"], ["blk_done_out"]),
        helper.make_node("Not", ["blk_done_out"], ["blk_live"]),
        helper.make_node("Cast", ["blk_live"], ["blk_live_i"], to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["blk_live_i"], ["blk_any_i"], keepdims=0),
        helper.make_node("Cast", ["blk_any_i"], ["blk_cond_out"], to=TensorProto.BOOL),
        helper.make_node("Identity", ["frame"], ["blk_frame_carry"]),  # carried and scanned: two names
    ]
    bool_b = helper.make_tensor_value_info
    body = helper.make_graph(
        body_nodes, "decoder_step_body",
        [helper.make_tensor_value_info("blk_iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("blk_cond_in", TensorProto.BOOL, []),
         bool_b("blk_done_in", TensorProto.BOOL, ["B"]), ins["prev_frame"]]
        + [ins[n] for n in STATE_NAMES],
        [helper.make_tensor_value_info("blk_cond_out", TensorProto.BOOL, []),
         bool_b("blk_done_out", TensorProto.BOOL, ["B"]), _renamed(outs["frame"], "blk_frame_carry")]
        + [outs["new_" + n] for n in STATE_NAMES]
        + [outs["frame"], helper.make_tensor_value_info("blk_gate", TensorProto.FLOAT, ["B"]), outs["alignment"]])
    carried = ["last_done", "last_frame"] + ["last_" + n for n in STATE_NAMES]
    scanned = ["frames", "gates", "alignments"]
    nodes = [
        helper.make_node("Shape", ["block_masks"], ["n_shape"], start=0, end=1),
        helper.make_node("Squeeze", ["n_shape"], ["n"]),
        _const("zero", 0, np.int64),
        helper.make_node("LessOrEqual", ["limit", "zero"], ["init_done"]),
        helper.make_node("Not", ["init_done"], ["init_live"]),
        helper.make_node("Cast", ["init_live"], ["init_live_i"], to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["init_live_i"], ["init_any_i"], keepdims=0),
        helper.make_node("Cast", ["init_any_i"], ["go"], to=TensorProto.BOOL),
        helper.make_node("Loop", ["n", "go", "init_done", "init_prev_frame"] + ["init_" + n for n in STATE_NAMES],
                         carried + scanned, body=body),
    ]
    mask_dims = [d.dim_param or d.dim_value for d in ins["masks"].type.tensor_type.shape.dim]
    step_shapes = {"frames": ["k", "B", 80], "gates": ["k", "B"], "alignments": ["k", "B", "T"]}
    graph = helper.make_graph(
        nodes, "decoder_block",
        [helper.make_tensor_value_info("block_masks", TensorProto.FLOAT, ["n"] + mask_dims),
         ins["memory"], ins["keys"], ins["pad"],
         helper.make_tensor_value_info("limit", TensorProto.INT64, ["B"]),
         helper.make_tensor_value_info("threshold", TensorProto.FLOAT, ["B"]),
         _renamed(ins["prev_frame"], "init_prev_frame")] + [_renamed(ins[n], "init_" + n) for n in STATE_NAMES],
        [_renamed(outs["frame"], "last_frame")] + [_renamed(outs["new_" + n], "last_" + n) for n in STATE_NAMES]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, step_shapes[n]) for n in scanned],
        initializer=list(g.initializer))  # outer-scope weights, visible inside the body
    model = helper.make_model(graph, opset_imports=list(step.opset_import))
    model.ir_version = step.ir_version
    return model


def gemms_to_matmuls(model: onnx.ModelProto) -> dict[str, str]:
    """Rewrite, in place, every Gemm with a constant transposed weight (our Linear/LSTMCell
    layers) as MatMul(x, W^T) + bias, naming each MatMul after its weight. Returns
    {weight initializer name: MatMul node name}, so callers can choose what to quantize by weight."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes, names = [], {}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transB") != 1
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = node.input[1]
        w_t = weight + "_T"
        model.graph.initializer.append(numpy_helper.from_array(
            np.ascontiguousarray(numpy_helper.to_array(inits[weight]).T), w_t))
        mm = f"matmul:{weight}"
        out = node.output[0] if len(node.input) < 3 else f"{mm}:out"
        nodes.append(helper.make_node("MatMul", [node.input[0], w_t], [out], name=mm))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=f"{mm}:bias"))
        names[weight] = mm
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _drop_unused_initializers(model)
    return names


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (K, N) float -> (int8 (K, N), scale (N,)): symmetric per output channel, [-127, 127]."""
    absmax = np.abs(w).max(axis=0)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def per_row_matmul(x: str, w: np.ndarray, out: str, prefix: str) -> tuple[list, list]:
    """Nodes and initializers computing ``out = x @ w`` (x (B, K) float, w (K, N) constant) with
    per-row uint8 activations and per-channel int8 weights (see the module docstring)."""
    wq, w_scale = quantize_weight(w)
    colsum = wq.astype(np.int64).sum(axis=0).astype(np.float32)  # |sum| <= 127 K: exact in float32
    p = prefix
    inits = [numpy_helper.from_array(wq, f"{p}:wq"), numpy_helper.from_array(w_scale, f"{p}:w_scale"),
             numpy_helper.from_array(colsum, f"{p}:colsum"),
             numpy_helper.from_array(np.asarray(1e-8, np.float32), f"{p}:eps"),
             numpy_helper.from_array(np.asarray(255.0, np.float32), f"{p}:levels"),
             numpy_helper.from_array(np.asarray(0.0, np.float32), f"{p}:q_lo"),
             numpy_helper.from_array(np.asarray(255.0, np.float32), f"{p}:q_hi")]
    n = helper.make_node
    nodes = [
        n("ReduceMin", [x], [f"{p}:min"], axes=[-1], keepdims=1),
        n("ReduceMax", [x], [f"{p}:max"], axes=[-1], keepdims=1),
        n("Sub", [f"{p}:max", f"{p}:min"], [f"{p}:range"]),
        n("Max", [f"{p}:range", f"{p}:eps"], [f"{p}:range_pos"]),  # a constant row: no 0/0
        n("Div", [f"{p}:range_pos", f"{p}:levels"], [f"{p}:scale"]),  # s_r (B, 1)
        n("Div", [x, f"{p}:scale"], [f"{p}:xs"]),
        n("Div", [f"{p}:min", f"{p}:scale"], [f"{p}:mins"]),
        n("Round", [f"{p}:xs"], [f"{p}:xr"]),
        n("Round", [f"{p}:mins"], [f"{p}:m"]),  # m_r = -zero point
        n("Sub", [f"{p}:xr", f"{p}:m"], [f"{p}:qf"]),
        n("Clip", [f"{p}:qf", f"{p}:q_lo", f"{p}:q_hi"], [f"{p}:qc"]),
        n("Cast", [f"{p}:qc"], [f"{p}:q"], to=TensorProto.UINT8),
        n("MatMulInteger", [f"{p}:q", f"{p}:wq"], [f"{p}:acc"]),
        n("Cast", [f"{p}:acc"], [f"{p}:accf"], to=TensorProto.FLOAT),
        n("Mul", [f"{p}:m", f"{p}:colsum"], [f"{p}:corr"]),
        n("Add", [f"{p}:accf", f"{p}:corr"], [f"{p}:sum"]),
        n("Mul", [f"{p}:sum", f"{p}:scale"], [f"{p}:sum_s"]),
        n("Mul", [f"{p}:sum_s", f"{p}:w_scale"], [out]),
    ]
    return nodes, inits


def _lstm_matmuls(model: onnx.ModelProto, src) -> dict[str, str]:
    matmuls = gemms_to_matmuls(model)
    lstm = {w: node for w, node in matmuls.items() if _LSTM_WEIGHT.search(w)}
    if len(lstm) != 4:  # a bug (the exporter renamed the weights), not a user error
        raise RuntimeError(f"expected the 4 LSTM matrices in {src}, found {sorted(matmuls)}")
    return lstm


def quantize_decoder_step(src: Path, dst: Path, activations: str = "row") -> None:
    """INT8 of the decoder step's LSTM matrices (weights int8 per output channel; activations
    uint8 quantized on each call, per row by default, or per tensor with ORT's quantize_dynamic,
    which couples a batch's rows). Everything else stays float."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
    model = onnx.load(str(src))
    lstm = _lstm_matmuls(model, src)
    if activations == "row":
        inits = {i.name: i for i in model.graph.initializer}
        nodes = []
        for node in model.graph.node:
            weight = next((w for w, name in lstm.items() if name == node.name), None)
            if weight is None:
                nodes.append(node)
                continue
            w = numpy_helper.to_array(inits[node.input[1]])  # (K, N), the transposed weight
            new_nodes, new_inits = per_row_matmul(node.input[0], w, node.output[0], f"q8:{weight}")
            nodes += new_nodes
            model.graph.initializer.extend(new_inits)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _drop_unused_initializers(model)
        onnx.save(model, str(dst))
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(dst.name + ".float.onnx")
    onnx.save(model, str(tmp))
    quiet = _QuietQuantizer()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(tmp), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_quantize=list(lstm.values()), op_types_to_quantize=["MatMul"])
    finally:
        logging.getLogger().removeFilter(quiet)
        tmp.unlink(missing_ok=True)


class _QuietQuantizer(logging.Filter):
    """The quantizer logs advice ("consider pre-processing") and per-tensor notes on the root
    logger; they mean nothing to a user of the engine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname
