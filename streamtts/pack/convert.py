"""Turn ttskit's pickled modules (read inertly by :mod:`streamtts.pack.unpickle`) into our own
state dicts and configs.

Parameter names are renamed to those of :mod:`streamtts.models`, weight norm is folded into plain
weights, and the hyper-parameters the pickles carry are read from the modules themselves.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from streamtts.errors import ModelPackError
from streamtts.models.config import AcousticConfig, VocoderConfig
from streamtts.pack.unpickle import Inert, flatten_state

# (upstream pattern, our name). Applied in order; the first match wins.
_ACOUSTIC_RENAMES = [
    (r"embedding\.weight", "encoder.embedding.weight"),
    (r"encoder\.convolutions\.(\d+)\.0\.conv\.(\w+)", r"encoder.convs.\1.conv.\2"),
    (r"encoder\.convolutions\.(\d+)\.1\.(\w+)", r"encoder.convs.\1.norm.\2"),
    (r"encoder\.lstm\.(\w+)", r"encoder.lstm.\1"),
    (r"speaker_embedding\.(\w+)", r"speaker_proj.\1"),
    (r"decoder\.prenet\.layers\.(\d+)\.linear_layer\.weight", r"decoder.prenet.\1.weight"),
    (r"decoder\.(attention_rnn|decoder_rnn)\.(\w+)", r"decoder.\1.\2"),
    (r"decoder\.attention_layer\.(query|memory)_layer\.linear_layer\.weight", r"decoder.attention.\1.weight"),
    (r"decoder\.attention_layer\.v\.linear_layer\.weight", "decoder.attention.v.weight"),
    (r"decoder\.attention_layer\.location_layer\.location_conv\.conv\.weight",
     "decoder.attention.location_conv.weight"),
    (r"decoder\.attention_layer\.location_layer\.location_dense\.linear_layer\.weight",
     "decoder.attention.location_dense.weight"),
    (r"decoder\.linear_projection\.linear_layer\.(\w+)", r"decoder.mel_proj.\1"),
    (r"decoder\.gate_layer\.linear_layer\.(\w+)", r"decoder.gate_proj.\1"),
    (r"postnet\.convolutions\.(\d+)\.0\.conv\.(\w+)", r"postnet.convs.\1.conv.\2"),
    (r"postnet\.convolutions\.(\d+)\.1\.(\w+)", r"postnet.convs.\1.norm.\2"),
]


def _rename(name: str, table: list[tuple[str, str]]) -> str:
    for pattern, repl in table:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise ModelPackError(f"unexpected parameter {name!r} in the model file")


def _attr(node: Inert, name: str) -> Any:
    if name not in node.attrs:
        raise ModelPackError(f"the model file lacks {node.cls}.{name}")
    return node.attrs[name]


def convert_acoustic(tree: Inert, hparams: dict[str, Any]) -> tuple[AcousticConfig, dict[str, torch.Tensor]]:
    """ttskit Tacotron2 tree + its hparams JSON -> (config, state dict in our names).

    ``gate_threshold``/``max_decoder_steps`` are taken from the pickled decoder (0.8, 1200), which
    is what ttskit's inference runs with, not from the hparams JSON (0.5, 1000): on the test
    sentences both thresholds stop every sentence on the gate, and 0.8 was the more intelligible
    by Whisper (fewer toneless-pinyin errors for Aiyue, the same for biaobei)."""
    if tree.cls != "mellotron.model.Tacotron2":
        raise ModelPackError(f"expected a Tacotron2 module, found {tree.cls}")
    decoder = tree.child("decoder")
    state = {_rename(k, _ACOUSTIC_RENAMES): v.contiguous() for k, v in flatten_state(tree).items()
             if not k.endswith("num_batches_tracked")}
    emb = state["encoder.embedding.weight"]
    config = AcousticConfig(
        n_symbols=emb.shape[0],
        symbols_dim=emb.shape[1],
        encoder_convs=int(hparams.get("encoder_n_convolutions", 3)),
        encoder_kernel=int(hparams.get("encoder_kernel_size", 5)),
        speaker_vector_dim=state["speaker_proj.weight"].shape[1],
        speaker_dim=state["speaker_proj.weight"].shape[0],
        n_mels=int(_attr(decoder, "n_mel_channels")),
        prenet_dim=int(_attr(decoder, "prenet_dim")),
        attention_rnn_dim=int(_attr(decoder, "attention_rnn_dim")),
        decoder_rnn_dim=int(_attr(decoder, "decoder_rnn_dim")),
        attention_dim=state["decoder.attention.query.weight"].shape[0],
        location_filters=state["decoder.attention.location_conv.weight"].shape[0],
        location_kernel=state["decoder.attention.location_conv.weight"].shape[2],
        postnet_dim=int(hparams.get("postnet_embedding_dim", 256)),
        postnet_kernel=int(hparams.get("postnet_kernel_size", 5)),
        postnet_convs=int(hparams.get("postnet_n_convolutions", 5)),
        gate_threshold=float(_attr(decoder, "gate_threshold")),
        max_decoder_steps=int(_attr(decoder, "max_decoder_steps")),
        sample_rate=int(hparams.get("sampling_rate", 22050)),
        hop_length=int(hparams.get("hop_length", 256)),
    )
    return config, state


def pickled_decoder_limits(tree: Inert) -> dict[str, float]:
    """The stop settings stored on ttskit's pickled decoder object."""
    decoder = tree.child("decoder")
    return {"gate_threshold": float(_attr(decoder, "gate_threshold")),
            "max_decoder_steps": int(_attr(decoder, "max_decoder_steps"))}


def _fold_weight_norm(node: Inert) -> torch.Tensor:
    """weight = g * v / ||v||, the norm taken over every dim but the hook's ``dim``."""
    params = node.attrs["_parameters"]
    g, v = params["weight_g"], params["weight_v"]
    hooks = [h for h in (node.attrs.get("_forward_pre_hooks") or {}).values()
             if h.cls == "torch.nn.utils.weight_norm.WeightNorm"]
    dim = int(hooks[0].attrs.get("dim", 0)) if hooks else 0
    dims = [d for d in range(v.dim()) if d != dim]
    return g * v / v.norm(dim=dims, keepdim=True)


def _conv(node: Inert) -> dict[str, torch.Tensor]:
    params = node.attrs["_parameters"]
    weight = _fold_weight_norm(node) if "weight_g" in params else params["weight"]
    return {"weight": weight.contiguous(), "bias": params["bias"].contiguous()}


def convert_vocoder(tree: Inert) -> tuple[VocoderConfig, dict[str, torch.Tensor]]:
    """ttskit MelGAN Generator tree -> (config, state dict with weight norm folded)."""
    if tree.cls != "melgan.model.generator.Generator":
        raise ModelPackError(f"expected a MelGAN Generator, found {tree.cls}")
    layers = [m for _, m in tree.child("generator").children()]
    convs = [m for m in layers if m.cls.endswith(".Conv1d")]
    ups = [m for m in layers if m.cls.endswith(".ConvTranspose1d")]
    stacks = [m for m in layers if m.cls.endswith(".ResStack")]
    if len(convs) != 2 or len(ups) != len(stacks):
        raise ModelPackError("the MelGAN file does not have the expected layer layout")
    state: dict[str, torch.Tensor] = {}

    def put(prefix: str, node: Inert) -> None:
        for k, v in _conv(node).items():
            state[f"{prefix}.{k}"] = v

    put("conv_pre", convs[0])
    put("conv_post", convs[1])
    rates = []
    dilations: tuple[int, ...] = ()
    for i, (up, stack) in enumerate(zip(ups, stacks)):
        put(f"ups.{i}", up)
        rates.append(int(_attr(up, "stride")[0]))
        blocks = [b for _, b in stack.child("blocks").children()]
        shortcuts = [s for _, s in stack.child("shortcuts").children()]
        dilations = tuple(int(_attr(b.child("2"), "dilation")[0]) for b in blocks)
        for j, (block, shortcut) in enumerate(zip(blocks, shortcuts)):
            put(f"stacks.{i}.dilated.{j}", block.child("2"))
            put(f"stacks.{i}.pointwise.{j}", block.child("4"))
            put(f"stacks.{i}.shortcut.{j}", shortcut)
    config = VocoderConfig(
        n_mels=int(_attr(tree, "mel_channel")),
        channels=state["conv_pre.weight"].shape[0],
        upsample_rates=tuple(rates),
        res_dilations=dilations,
    )
    return config, state
