"""Rewrites of exported ONNX graphs: the decoder's block Loop, and dynamic INT8 quantization.

How to call::

    block = build_decoder_block(onnx.load("decoder_step.onnx"))      # fp32 or quantized step
    quantize_decoder_step("fp32/decoder_step.onnx", "int8/decoder_step.onnx")

Choosing what to quantize in the decoder step (one thread, ms/step of the single-step graph, and
the frame error of one step vs fp32 from fp32's own states over a 290-step utterance, max/mean):

    fp32                                          1.2-1.5 ms
    LSTM matrices, per-channel (this recipe)      0.40 ms   0.43 / 0.14
    LSTM matrices, per-tensor                     0.39 ms   1.04 / 0.44
    every MatMul/Gemm/Conv (quantize_dynamic)     0.41 ms   1.54 / 0.38
    recurrent (hh) matrices only                  0.92 ms   0.06 / 0.01
    MatMulNBits 8-bit, blocks of 32, int8 math    0.88 ms   0.20 / 0.07   (no VNNI on this CPU)
    MatMulNBits 4-bit, blocks of 32               0.44 ms   1.55 / 0.72

The LSTM matrices are 97 % of the step's weights and give the whole speed-up. Splitting the LSTM
inputs by source (prenet, text context, speaker part of the context) so each gets its own
activation scale did not lower the error. The error matters less than it looks: it is a third to
a half of what changing the prenet dropout seed does, and Whisper's syllable error on the test
sentences is unchanged within a syllable (tests/test_engines.py, engines/registry.py).
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


def _renamed(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def build_decoder_block(step: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a decoder step graph (fp32 or quantized) in an ONNX Loop over a block of steps.

    Inputs:  block_masks (n, 2, 1, 128), memory (1, T, 288), keys (1, T, 64), gate_threshold ()
             float32, init_prev_frame (1, 80), init_<state> (the 7 state tensors, as the step's)
    Outputs: last_frame (1, 80), last_<state> (after the last step run), frames (k, 1, 80),
             gate_logits (k, 1), alignments (k, 1, T)
    The loop runs k = n steps, or stops after the first step whose sigmoid(gate) > gate_threshold;
    that stop step is the last of the k outputs and is included in the last_* state, as in
    TorchEngine.decode. One Run per block saves ONNX Runtime's and Python's per-call overhead."""
    g = step.graph
    ins = {v.name: v for v in g.input}
    outs = {v.name: v for v in g.output}
    body_nodes = [helper.make_node("Gather", ["block_masks", "iter"], ["masks"], axis=0)]
    body_nodes += list(g.node)
    body_nodes += [
        helper.make_node("Sigmoid", ["gate_logit"], ["gate_prob"]),
        helper.make_node("ReduceMax", ["gate_prob"], ["gate_max"], keepdims=0),
        helper.make_node("Greater", ["gate_max", "gate_threshold"], ["gate_fired"]),
        helper.make_node("Not", ["gate_fired"], ["cond_out"]),
        helper.make_node("Identity", ["frame"], ["frame_carry"]),  # carried and scanned: two names
    ]
    body = helper.make_graph(
        body_nodes, "decoder_step_body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), ins["prev_frame"]]
        + [ins[n] for n in STATE_NAMES],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _renamed(outs["frame"], "frame_carry")]
        + [outs["new_" + n] for n in STATE_NAMES] + [outs[n] for n in ("frame", "gate_logit", "alignment")])
    carried = ["last_frame"] + ["last_" + n for n in STATE_NAMES]
    scanned = ["frames", "gate_logits", "alignments"]
    nodes = [
        helper.make_node("Shape", ["block_masks"], ["n_shape"], start=0, end=1),
        helper.make_node("Squeeze", ["n_shape"], ["n"]),
        helper.make_node("Constant", [], ["go"], value=helper.make_tensor("go", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["n", "go", "init_prev_frame"] + ["init_" + n for n in STATE_NAMES],
                         carried + scanned, body=body),
    ]
    mask_dims = [d.dim_value for d in ins["masks"].type.tensor_type.shape.dim]
    step_shapes = {"frames": ["k", 1, 80], "gate_logits": ["k", 1], "alignments": ["k", 1, "T"]}
    graph = helper.make_graph(
        nodes, "decoder_block",
        [helper.make_tensor_value_info("block_masks", TensorProto.FLOAT, ["n"] + mask_dims),
         ins["memory"], ins["keys"], helper.make_tensor_value_info("gate_threshold", TensorProto.FLOAT, []),
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
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return names


def quantize_decoder_step(src: Path, dst: Path) -> None:
    """Dynamic INT8 of the decoder step's LSTM matrices (weights int8 per output channel,
    activations uint8 per tensor, quantized on each call); everything else stays float."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    matmuls = gemms_to_matmuls(model)
    lstm = [node for weight, node in matmuls.items() if _LSTM_WEIGHT.search(weight)]
    if len(lstm) != 4:  # a bug (the exporter renamed the weights), not a user error
        raise RuntimeError(f"expected the 4 LSTM matrices in {src}, found {sorted(matmuls)}")
    tmp = dst.with_name(dst.name + ".float.onnx")
    onnx.save(model, str(tmp))
    quiet = _QuietQuantizer()
    logging.getLogger().addFilter(quiet)
    try:
        quantize_dynamic(str(tmp), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_quantize=lstm, op_types_to_quantize=["MatMul"])
    finally:
        logging.getLogger().removeFilter(quiet)
        tmp.unlink(missing_ok=True)


class _QuietQuantizer(logging.Filter):
    """The quantizer logs advice ("consider pre-processing") and per-tensor notes on the root
    logger; they mean nothing to a user of the engine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname
