"""The Tacotron adapter: everything Tacotron-specific about decoding behind ``AcousticModel``.

Prenet dropout masks (from each row's seed), the gate threshold, the step cap by input length
and the windowed postnet live here; a backend supplies four numpy-in, numpy-out hooks::

    memory, keys = backend._encode(ids (1, T) int64, speaker (1, 32) float32)   # (1,T,288), (1,T,64)
    state        = initial_state(memory)      # the 7 decoder tensors, (1, ·)
    out = backend._decode(batch: DecodeBatch) # n batched steps with per-row stop, see DecodeBatch
    mel = backend._postnet(frames (1, 80, W), at_start, at_end)   # final mel of the exact range

Rows of different lengths share a batch by padding the memory to the longest T and masking the
padded positions in the attention (their weights are exactly 0, so a row's numbers do not depend
on its neighbours beyond float rounding).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engines.base import AcousticModel, AcousticRow, MelOut
from streamtts.models.config import AcousticConfig

# Speech takes a few decoder frames per input symbol; 10 per symbol leaves room for slow speech
# (twice the test sentences' slowest, and more) but stops a bad alignment from babbling on.
FRAMES_PER_SYMBOL = 10
MIN_STEP_CAP = 50
# State tensors whose last axis is T (padded per batch); the rest are (1, width).
STATE_NAMES = ("attention_hidden", "attention_cell", "decoder_hidden", "decoder_cell",
               "attention_weights", "attention_weights_cum", "attention_context")
_PER_T = (4, 5)


def step_cap(n_symbols: int, max_decoder_steps: int) -> int:
    return min(max_decoder_steps, max(MIN_STEP_CAP, FRAMES_PER_SYMBOL * n_symbols))


def make_masks(config: AcousticConfig, steps: int, seed: int) -> np.ndarray:
    """Prenet keep-masks of one utterance: (steps, 2, 128) float32 of {0, 1/(1-p)}; the same seed
    gives the same masks (torch's generator, so seeds mean what they always meant)."""
    import torch

    from streamtts.models.acoustic import prenet_masks

    return prenet_masks(config, steps, 1, torch.Generator().manual_seed(seed))[:, :, 0, :].numpy()


@dataclass
class DecodeBatch:
    """Inputs of one batched decoder call (B rows, memory padded to Tmax)."""

    memory: np.ndarray  # (B, Tmax, 288)
    keys: np.ndarray  # (B, Tmax, 64)
    pad: np.ndarray  # (B, Tmax) bool, True at padded positions
    state: tuple  # the 7 state tensors, (B, ·), per-T ones padded with 0
    prev_frame: np.ndarray  # (B, 80)
    masks: np.ndarray  # (n, 2, B, 128)
    limit: np.ndarray  # (B,) int64: a row is done after this many steps ...
    threshold: np.ndarray  # (B,) float32: ... or after the step whose sigmoid(gate) > threshold


@dataclass
class DecodeResult:
    """k <= n steps were run; k < n only when every row was done."""

    frames: np.ndarray  # (k, B, 80)
    gates: np.ndarray  # (k, B) sigmoid(gate)
    alignments: np.ndarray  # (k, B, Tmax)
    state: tuple  # after the k-th step, (B, ·)
    last_frame: np.ndarray  # (B, 80)


@dataclass(eq=False)
class _Row:
    memory: np.ndarray  # (1, T, 288)
    keys: np.ndarray  # (1, T, 64)
    state: tuple  # (1, ·) each
    frame: np.ndarray  # (1, 80)
    masks: np.ndarray  # (cap, 2, 128)
    threshold: float
    frames: np.ndarray  # (F, 80) decoder frames not yet needed only as postnet context
    frames_start: int  # utterance index of frames[0]


class TacotronModel(AcousticModel):
    """Subclasses set ``config`` and implement the hooks."""

    config: AcousticConfig

    # -- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _encode(self, ids: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def _decode(self, batch: DecodeBatch) -> DecodeResult: ...

    @abc.abstractmethod
    def _postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray: ...

    # -- AcousticModel -------------------------------------------------------------------------
    @property
    def n_mels(self) -> int:  # type: ignore[override]
        return self.config.n_mels

    @property
    def hop_length(self) -> int:  # type: ignore[override]
        return self.config.hop_length

    @property
    def sample_rate(self) -> int:  # type: ignore[override]
        return self.config.sample_rate

    @property
    def lookahead(self) -> int:
        """The postnet's radius: 2 frames per conv on each side."""
        cfg = self.config
        return (cfg.postnet_kernel - 1) // 2 * cfg.postnet_convs

    def start(self, ids: np.ndarray, speaker: np.ndarray, seed: int,
              gate_threshold: float | None = None) -> AcousticRow:
        cfg = self.config
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        memory, keys = self._encode(ids, np.asarray(speaker, np.float32).reshape(1, -1))
        t = ids.shape[1]
        cap = step_cap(t, cfg.max_decoder_steps)
        z = np.zeros
        state = (z((1, cfg.attention_rnn_dim), np.float32), z((1, cfg.attention_rnn_dim), np.float32),
                 z((1, cfg.decoder_rnn_dim), np.float32), z((1, cfg.decoder_rnn_dim), np.float32),
                 z((1, t), np.float32), z((1, t), np.float32), z((1, cfg.memory_dim), np.float32))
        row = _Row(memory, keys, state, z((1, cfg.n_mels), np.float32), make_masks(cfg, cap, seed),
                   cfg.gate_threshold if gate_threshold is None else float(gate_threshold),
                   z((0, cfg.n_mels), np.float32), 0)
        return AcousticRow(n_ids=t, cap=cap, private=row)

    def decode(self, rows: Sequence[AcousticRow], steps: int) -> list[MelOut]:
        live = [r for r in rows if not r.finished]
        results = {id(r): MelOut(np.zeros((self.n_mels, 0), np.float32), np.zeros((0, r.n_ids), np.float32), True)
                   for r in rows if r.finished}
        if live:
            decoded = self._decode(self._batch(live, steps))
            for b, row in enumerate(live):
                results[id(row)] = self._finish_row(row, decoded, b)
        return [results[id(r)] for r in rows]

    def decode_steps(self, rows: Sequence[AcousticRow], steps: int) -> DecodeResult:
        """``steps`` decoder steps of the rows in one call, as they come out of the decoder (frames
        before the postnet, gates, alignments), without advancing the rows: the eager reference
        (:mod:`streamtts.reference`) decodes a whole utterance this way."""
        return self._decode(self._batch(rows, steps))

    # -- internals -----------------------------------------------------------------------------
    def _batch(self, rows: Sequence[AcousticRow], steps: int) -> DecodeBatch:
        cfg = self.config
        b, tmax = len(rows), max(r.n_ids for r in rows)
        memory = np.zeros((b, tmax, cfg.memory_dim), np.float32)
        keys = np.zeros((b, tmax, cfg.attention_dim), np.float32)
        pad = np.ones((b, tmax), bool)
        state = [np.zeros((b, tmax if i in _PER_T else s.shape[1]), np.float32)
                 for i, s in enumerate(rows[0].private.state)]
        masks = np.ones((steps, 2, b, cfg.prenet_dim), np.float32)
        limit = np.zeros(b, np.int64)
        for i, row in enumerate(rows):
            p, t = row.private, row.n_ids
            memory[i, :t], keys[i, :t], pad[i, :t] = p.memory[0], p.keys[0], False
            for j, s in enumerate(p.state):
                state[j][i, :s.shape[1]] = s[0]
            n = min(steps, row.cap - row.steps)
            masks[:n, :, i] = p.masks[row.steps: row.steps + n]
            limit[i] = n
        return DecodeBatch(memory, keys, pad, tuple(state),
                           np.concatenate([r.private.frame for r in rows]), masks, limit,
                           np.asarray([r.private.threshold for r in rows], np.float32))

    def _finish_row(self, row: AcousticRow, out: DecodeResult, b: int) -> MelOut:
        p, t, n = row.private, row.n_ids, int(min(len(out.gates), row.cap - row.steps))
        gates = out.gates[:n, b]
        fired = np.flatnonzero(gates > p.threshold)
        keep = int(fired[0]) if len(fired) else n  # the stop frame is not spoken
        row.steps += keep + 1 if len(fired) else n
        row.stopped_by_gate = bool(len(fired))
        row.finished = row.stopped_by_gate or row.steps >= row.cap
        if not row.finished:
            p.state = tuple(np.ascontiguousarray(s[b: b + 1, :t] if i in _PER_T else s[b: b + 1])
                            for i, s in enumerate(out.state))
            p.frame = np.ascontiguousarray(out.last_frame[b: b + 1])
        p.frames = np.concatenate((p.frames, out.frames[:keep, b]))
        return MelOut(self._final_mel(row), np.ascontiguousarray(out.alignments[:keep, b, :t]), row.finished)

    def _final_mel(self, row: AcousticRow) -> np.ndarray:
        """Postnet over the frames whose receptive field is now complete (all of them at the end)."""
        p, r = row.private, self.lookahead
        total = p.frames_start + len(p.frames)  # decoder frames so far
        lo = row.frames_out
        hi = total if row.finished else total - r
        if hi <= lo:
            return np.zeros((self.n_mels, 0), np.float32)
        ws = max(0, lo - r)  # window start (utterance index), with r frames of left context
        window = p.frames[ws - p.frames_start:]
        out = self._postnet(np.ascontiguousarray(window.T)[None], ws == 0, row.finished)[0]
        out_start = ws if ws == 0 else ws + r
        mel = out[:, lo - out_start: hi - out_start]
        row.frames_out = hi
        # keep only the frames later windows still need as context
        drop = max(0, hi - r - p.frames_start)
        if drop and not row.finished:
            p.frames, p.frames_start = p.frames[drop:], p.frames_start + drop
        if row.finished:
            row.private = None  # nothing more to do: let the memory go
        return np.ascontiguousarray(mel, np.float32)
