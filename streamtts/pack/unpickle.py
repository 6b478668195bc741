"""Read a pickled torch checkpoint without running any of its code.

ttskit ships its models as ``torch.save(module)`` archives: the pickle names ttskit's own classes
(``mellotron.model.Decoder``, ``melgan.model.generator.Generator`` ...) and torch.nn classes, and a
normal ``torch.load`` would import and run that code. Here every class name on an allow-list is
mapped to :class:`Inert`, a placeholder that only records the attributes the pickle sets, tensors
are rebuilt by our own functions from the raw storages in the zip, and any other global is refused
with :class:`~streamtts.errors.UnsafePickleError`.

Both formats ``torch.save`` writes are read: the zip archive (torch >= 1.6, ttskit's files) and
the legacy one (a run of pickles followed by the raw storages; the HiFiGAN ``.pth.tar`` files).

How to call::

    tree = load_module_tree(open("mellotron.pt", "rb").read())
    state = flatten_state(tree)          # {"decoder.attention_rnn.weight_ih": tensor, ...}
    tree.child("decoder").attrs["gate_threshold"]

    obj = load_checkpoint(open("generator.pth.tar", "rb").read())   # either format, any root
    obj["generator"]["conv_pre.weight_v"]
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Iterator

import torch

from streamtts.errors import UnsafePickleError

# Storage classes as they appear in pickles written by torch 1.x; each maps to the dtype of its data.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# Module classes that may appear in the two ttskit checkpoints. They become Inert placeholders:
# nothing of their code runs, we only read their recorded attributes.
_MODULE_CLASSES = {
    ("mellotron.model", "Tacotron2"),
    ("mellotron.model", "Encoder"),
    ("mellotron.model", "Decoder"),
    ("mellotron.model", "Postnet"),
    ("mellotron.model", "Prenet"),
    ("mellotron.model", "Attention"),
    ("mellotron.model", "LocationLayer"),
    ("mellotron.layers", "ConvNorm"),
    ("mellotron.layers", "LinearNorm"),
    ("melgan.model.generator", "Generator"),
    ("melgan.model.res_stack", "ResStack"),
    ("torch.nn.modules.batchnorm", "BatchNorm1d"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.modules.conv", "Conv1d"),
    ("torch.nn.modules.conv", "ConvTranspose1d"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.rnn", "LSTM"),
    ("torch.nn.modules.rnn", "LSTMCell"),
    ("torch.nn.modules.sparse", "Embedding"),
    ("torch.nn.modules.activation", "LeakyReLU"),
    ("torch.nn.modules.activation", "Tanh"),
    ("torch.nn.modules.padding", "ReflectionPad1d"),
    ("torch.nn.utils.weight_norm", "WeightNorm"),
}


class Inert:
    """Stand-in for a pickled object: remembers its class name and the attributes set on it."""

    def __init__(self, *args: Any) -> None:  # called by NEWOBJ/REDUCE with the pickled args
        self.attrs: dict[str, Any] = {}
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"unexpected state of type {type(state).__name__} for {self.cls}")
        self.attrs = dict(state)

    cls = "?"

    # -- tree helpers ---------------------------------------------------------------------------
    def child(self, name: str) -> "Inert":
        node: Inert = self
        for part in name.split("."):
            node = node.attrs["_modules"][part]
        return node

    def children(self) -> Iterator[tuple[str, "Inert"]]:
        for name, mod in (self.attrs.get("_modules") or {}).items():
            if mod is not None:
                yield name, mod

    def __repr__(self) -> str:
        return f"Inert({self.cls})"


def _inert_class(module: str, name: str) -> type:
    return type(name, (Inert,), {"cls": f"{module}.{name}"})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_rest: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def _rebuild_parameter(data: torch.Tensor, *_rest: Any) -> torch.Tensor:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._classes: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _MODULE_CLASSES:
            if key not in self._classes:
                self._classes[key] = _inert_class(module, name)
            return self._classes[key]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module in ("builtins", "__builtin__") and name == "set":
            return set
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise UnsafePickleError(
            f"refused to load {module}.{name}: the model file asks for code that is not on the "
            "allow-list (the file may be tampered with or is not a ttskit model)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        # torch's zip format: ('storage', dtype-marker, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise UnsafePickleError(f"unexpected storage type {dtype!r}")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if len(raw) != numel * itemsize:
            raise UnsafePickleError(f"storage {key} has {len(raw)} bytes, expected {numel * itemsize}")
        return torch.frombuffer(bytearray(raw), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _load_zip(blob: bytes) -> Any:
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
    except zipfile.BadZipFile as exc:
        raise UnsafePickleError(f"not a torch zip checkpoint: {exc}") from exc
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise UnsafePickleError("not a torch zip checkpoint: no single data.pkl inside")
    prefix = pkl[0][: -len("data.pkl")]
    try:
        return _RestrictedUnpickler(archive.read(pkl[0]), archive, prefix).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # malformed pickle: report it as a model-pack problem, not a crash
        raise UnsafePickleError(f"could not read the model pickle: {exc}") from exc


def load_module_tree(blob: bytes) -> Inert:
    """Unpickle a torch zip checkpoint (bytes) into a tree of :class:`Inert` nodes."""
    root = _load_zip(blob)
    if not isinstance(root, Inert):
        raise UnsafePickleError(f"expected a pickled module, found {type(root).__name__}")
    return root


# -- legacy format ---------------------------------------------------------------------------------
# torch.save before the zip format (and with _use_new_zipfile_serialization=False) writes five
# things back to back: pickles of a magic number, the protocol version and a sys-info dict, the
# object's pickle (storages as persistent ids), a pickle of the storage keys in write order, and
# then each storage's raw bytes, prefixed by its element count as a little-endian int64.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _NoGlobalsUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain data only."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refused to load {module}.{name}: unexpected in a checkpoint header")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"unexpected persistent id {pid!r} in a checkpoint header")


def _view_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_rest: Any) -> torch.Tensor:
    # A view, not a copy: in the legacy format the storage bytes come after the pickle, and are
    # written into ``storage`` in place once it is read.
    return torch.as_strided(storage, size, stride, offset)


class _LegacyUnpickler(_RestrictedUnpickler):
    def __init__(self, stream: io.BytesIO):
        pickle.Unpickler.__init__(self, stream)
        self._classes = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _view_tensor
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        # legacy format: ('storage', dtype-marker, key, location, numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel, view = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not isinstance(numel, int):
            raise UnsafePickleError(f"unexpected storage id {pid!r}")
        if view is not None:
            raise UnsafePickleError("storage views of the old torch format are not supported")
        if numel < 0 or numel * torch.empty((), dtype=dtype).element_size() > (1 << 34):
            raise UnsafePickleError(f"implausible storage size {numel}")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = torch.zeros(numel, dtype=dtype)
        elif storage.dtype != dtype or storage.numel() != numel:
            raise UnsafePickleError(f"storage {key} is declared twice with different types")
        return storage


def _load_legacy(blob: bytes) -> Any:
    stream = io.BytesIO(blob)
    try:
        if _NoGlobalsUnpickler(stream).load() != _LEGACY_MAGIC:
            raise UnsafePickleError("not a torch checkpoint: neither a zip archive nor the legacy format")
        if _NoGlobalsUnpickler(stream).load() != _LEGACY_PROTOCOL:
            raise UnsafePickleError("unsupported legacy torch checkpoint protocol")
        info = _NoGlobalsUnpickler(stream).load()
        if not (isinstance(info, dict) and info.get("little_endian") is True):
            raise UnsafePickleError("legacy torch checkpoint is not little-endian")
        unpickler = _LegacyUnpickler(stream)
        root = unpickler.load()
        keys = _NoGlobalsUnpickler(stream).load()
        if not (isinstance(keys, list) and sorted(keys) == sorted(unpickler.storages)):
            raise UnsafePickleError("legacy torch checkpoint: storage keys do not match the pickle")
        for key in keys:
            storage = unpickler.storages[key]
            count = int.from_bytes(stream.read(8), "little", signed=True)
            nbytes = storage.numel() * storage.element_size()
            raw = stream.read(nbytes)
            if count != storage.numel() or len(raw) != nbytes:
                raise UnsafePickleError(f"storage {key} is truncated or has the wrong size")
            if nbytes:
                storage.copy_(torch.frombuffer(bytearray(raw), dtype=storage.dtype))
    except UnsafePickleError:
        raise
    except Exception as exc:  # malformed pickle: report it as a model-pack problem, not a crash
        raise UnsafePickleError(f"could not read the model pickle: {exc}") from exc
    return root


def load_checkpoint(blob: bytes) -> Any:
    """Unpickle a ``torch.save`` file of either format (bytes) with the same allow-list: module
    trees become :class:`Inert` nodes, state dicts come back as dicts of tensors."""
    if blob[:4] == b"PK\x03\x04":
        return _load_zip(blob)
    if blob[:2] != b"\x80\x02":  # the legacy format starts with a protocol-2 pickle
        raise UnsafePickleError("not a torch checkpoint: neither a zip archive nor the legacy format")
    return _load_legacy(blob)


def flatten_state(root: Inert, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """All parameters and buffers of the tree, keyed by dotted path like ``state_dict()``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (root.attrs.get(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor
    for name, child in root.children():
        out.update(flatten_state(child, f"{prefix}{name}."))
    return out
