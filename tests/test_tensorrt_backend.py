"""What of the TensorRT backend runs without a GPU: optimization profiles read from our exported
graphs, engine cache keys, and the typed error when TensorRT is missing."""

from __future__ import annotations

import importlib.util

import pytest

from engines import tensorrt_backend as trt_backend
from engines.tensorrt_backend import (DECODER_RANGES, TensorRTUnavailableError, cache_key, graph_inputs, plan_path,
                                      profile_shapes, vocoder_ranges)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def graphs():
    from engines.onnx_export import ensure_graphs, ensure_vocoder_graphs
    from engines.registry import vocoder_source
    from streamtts.pack import ensure_pack

    pack = ensure_pack()
    return ensure_graphs(pack, "fp32"), ensure_vocoder_graphs(vocoder_source(pack, "hifigan"))


def test_decoder_step_profile_from_the_graph(graphs):
    acoustic, _ = graphs
    shapes = profile_shapes(graph_inputs(acoustic.path("decoder_step")), DECODER_RANGES)
    assert list(shapes) == ["prev_frame", "masks", "memory", "keys", "pad", "attention_hidden", "attention_cell",
                            "decoder_hidden", "decoder_cell", "attention_weights", "attention_weights_cum",
                            "attention_context"]
    assert shapes["memory"] == ((1, 1, 288), (64, 64, 288), (1024, 256, 288))
    assert shapes["masks"] == ((2, 1, 128), (2, 64, 128), (2, 1024, 128))  # batch is axis 1 here
    assert shapes["pad"] == ((1, 1), (64, 64), (1024, 256))
    assert shapes["attention_context"] == ((1, 288), (64, 288), (1024, 288))


def test_decoder_block_profile_has_the_step_axis(graphs):
    acoustic, _ = graphs
    shapes = profile_shapes(graph_inputs(acoustic.path("decoder_block")), DECODER_RANGES)
    assert shapes["block_masks"] == ((1, 2, 1, 128), (32, 2, 64, 128), (64, 2, 1024, 128))
    assert shapes["limit"] == ((1,), (64,), (1024,))
    assert "init_attention_weights" in shapes and "frames" not in shapes  # inputs only


def test_vocoder_length_profile(graphs):
    _, vocoder = graphs
    context = int(vocoder.meta["settings"]["context"])
    interior = profile_shapes(graph_inputs(vocoder.path("vocoder_00")), vocoder_ranges(context, False, False))
    whole = profile_shapes(graph_inputs(vocoder.path("vocoder_11")), vocoder_ranges(context, True, True))
    lo, opt, hi = interior["mel"]
    assert lo == (1, 80, 2 * context + 1) and opt[1] == 80 and hi[2] >= opt[2] > lo[2]
    assert whole["mel"][0] == (1, 80, 1)
    assert profile_shapes(graph_inputs(vocoder.path("vocoder_01")), vocoder_ranges(context, False, True))["mel"][0] \
        == (1, 80, context + 1)


def test_profile_needs_a_range_for_every_symbol(graphs):
    acoustic, _ = graphs
    with pytest.raises(ValueError, match="'T'"):
        profile_shapes(graph_inputs(acoustic.path("decoder_step")), {"B": (1, 2, 4)})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        profile_shapes([("x", ("B", 3))], {"B": (4, 2, 8)})


def test_cache_key_changes_with_everything_a_plan_depends_on(tmp_path):
    shapes = {"mel": ((1, 80, 1), (16, 80, 106), (256, 80, 4096))}
    base = cache_key("NVIDIA H200", "10.9.0", "ab" * 32, shapes)
    assert base == cache_key("NVIDIA H200", "10.9.0", "ab" * 32, dict(shapes)) and len(base) == 64
    variants = [cache_key("NVIDIA A100-SXM4-80GB", "10.9.0", "ab" * 32, shapes),
                cache_key("NVIDIA H200", "10.10.0", "ab" * 32, shapes),
                cache_key("NVIDIA H200", "10.9.0", "cd" * 32, shapes),
                cache_key("NVIDIA H200", "10.9.0", "ab" * 32, {"mel": ((1, 80, 1), (16, 80, 106), (512, 80, 4096))}),
                cache_key("NVIDIA H200", "10.9.0", "ab" * 32, shapes, fp16=False)]
    assert len({base, *variants}) == 6
    path = plan_path(tmp_path, "/x/vocoder_00.onnx", base)
    assert path.parent == tmp_path / "tensorrt" and path.name == f"vocoder_00-{base[:24]}.plan"


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_a_typed_error_naming_what_to_install():
    with pytest.raises(TensorRTUnavailableError) as err:
        trt_backend.import_tensorrt()
    assert err.value.code == "tensorrt_unavailable"
    assert "tensorrt-cu12" in err.value.message and "cuda engine" in err.value.message
    with pytest.raises(TensorRTUnavailableError):  # before any model or graph is loaded
        trt_backend.TensorRTTacotron()
    with pytest.raises(TensorRTUnavailableError):
        trt_backend.build_plan("/nonexistent.onnx", {})


def test_onnx_gpu_providers_reflect_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    providers = trt_backend.onnx_gpu_providers()
    if gpu:
        assert providers is not None and providers[-1] == "CPUExecutionProvider"
    else:
        assert providers is None
