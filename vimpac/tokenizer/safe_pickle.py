"""Read the parameters out of a pickled torch module without running the pickle's code.

OpenAI's `encoder.pkl` / `decoder.pkl` are `torch.save` of whole `dall_e` module objects, so a
plain `torch.load` imports `dall_e` and lets the file call any function it names. Here the
pickle is read by `RestrictedUnpickler`, whose `find_class` admits a short allow-list:

* module classes named by the caller (e.g. `dall_e.encoder.Encoder`, `torch.nn...Sequential`)
  become `PickledModule` stand-ins that only *record* their pickled `__dict__`;
* torch's tensor / parameter rebuild functions and storage types map onto our own functions,
  which build tensors from the raw bytes in the archive;
* a few inert containers (`OrderedDict`, `set`) and `torch.device` (read as a plain string).

Anything else (`os.system`, `builtins.eval`, `subprocess.Popen`, ...) raises `TokenizerError`
naming the file and the refused global before it can be called. Both torch file layouts are
read: the zip archive (`torch.save` since 1.6) and the legacy stream of pickles.

`load_module_pickle(path, allowed_modules)` returns the top-level stand-in; its
`state_dict()` gives the parameters under their usual dotted names.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from vimpac.tokenizer.base import TokenizerError

# The legacy (pre-zip) torch format starts with this pickled integer.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch's typed storage classes, as named in pickles, and the dtype they carry.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# The standard torch.nn modules a pickled network may contain; all are parameter-free or
# hold plain parameters, so recording their state is enough.
STANDARD_NN_MODULES: tuple[str, ...] = (
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
)


# Deepest module nesting accepted (dall_e's is 5: Encoder.blocks.group_1.block_1.res_path.conv_1).
MAX_MODULE_DEPTH = 32


class PickledModule:
    """Stand-in for a pickled `nn.Module`: remembers its class name and pickled attributes.

    Unpickling calls `cls.__new__(cls)` then `__setstate__(state)`; nothing of the original
    class runs. `state` is the module's `__dict__` (`_parameters`, `_modules`, attributes).
    """

    qualname: str = "?"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TokenizerError(f"pickled {self.qualname} has state of type {type(state).__name__}, expected a dict")
        self.state = state

    def attribute(self, name: str, default: Any = None) -> Any:
        return getattr(self, "state", {}).get(name, default)

    def mapping(self, name: str) -> dict[str, Any]:
        """A dict attribute such as `_modules` or `_parameters` (empty when absent)."""
        value = self.attribute(name) or {}
        if not isinstance(value, dict):
            raise TokenizerError(f"pickled {self.qualname}.{name} is {type(value).__name__}, expected a dict")
        return dict(value)

    def children(self) -> dict[str, PickledModule | None]:
        return self.mapping("_modules")

    def state_dict(self, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
        """Parameters and persistent buffers under dotted names, as `nn.Module.state_dict`.

        A pickle can make a module its own descendant, or name one module as many children
        at every level (a few bytes each in the file, exponentially many paths to walk), or
        nest modules deeper than Python recursion allows; all are refused, as the released
        networks share no modules and nest a handful of levels deep.
        """
        return self._collect(prefix, set(), 0)

    def _collect(self, prefix: str, seen: set[int], depth: int) -> "OrderedDict[str, torch.Tensor]":
        where = prefix.rstrip(".") or "the top-level module"
        if depth > MAX_MODULE_DEPTH:
            raise TokenizerError(f"pickled modules nest deeper than {MAX_MODULE_DEPTH} levels (at {where}); "
                                 "expected a network's plain module tree")
        if id(self) in seen:
            raise TokenizerError(f"pickled {self.qualname} at {where} appears twice in the module tree (a cycle "
                                 "or a shared sub-module); expected a network's plain module tree")
        seen.add(id(self))
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        non_persistent = set(self.attribute("_non_persistent_buffers_set", ()) or ())
        for kind in ("_parameters", "_buffers"):
            for name, value in self.mapping(kind).items():
                if value is None or (kind == "_buffers" and name in non_persistent):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise TokenizerError(f"pickled {self.qualname}.{name} is {type(value).__name__}, expected a tensor")
                out[prefix + name] = value.detach().contiguous().clone()
        for name, child in self.children().items():
            if child is None:
                continue
            if not isinstance(child, PickledModule):
                raise TokenizerError(f"pickled {self.qualname} child {name!r} is {type(child).__name__}, not a module")
            out.update(child._collect(prefix + name + ".", seen, depth + 1))
        return out


def _stand_in(qualname: str) -> type[PickledModule]:
    return type(qualname.rsplit(".", 1)[-1], (PickledModule,), {"qualname": qualname})


class _StorageType:
    """What a pickled `torch.FloatStorage` (etc.) becomes: just the dtype it names."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    # `storage` is the flat tensor our persistent_load built; the rest (requires_grad,
    # backward hooks, metadata) does not matter for inference weights.
    if not isinstance(storage, torch.Tensor):
        raise TokenizerError(f"tensor rebuilt from {type(storage).__name__}, expected a storage")
    needed = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0
    if needed > storage.numel():
        raise TokenizerError(f"tensor of size {tuple(size)} does not fit its storage of {storage.numel()} elements")
    # Zero or overlapping strides let a tiny storage pose as a huge tensor, which `state_dict()`
    # would then copy into real memory; network weights never share elements that way.
    elements = 1
    for s in size:
        elements *= s
    if elements > storage.numel():
        raise TokenizerError(f"tensor of size {tuple(size)} has more elements than its storage of "
                             f"{storage.numel()} (overlapping strides {tuple(stride)}); expected plain weights")
    # A view, not a copy: in the legacy format the bytes are filled in after the pickle.
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise TokenizerError(f"parameter rebuilt from {type(data).__name__}, expected a tensor")
    return data


def _device(name: Any, *_ignored: Any) -> str:
    return str(name)


_SAFE_FUNCTIONS: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,
    "torch.device": _device,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only allow-listed globals (see the module docstring).

    `load_storage(dtype, key, numel)` supplies the flat tensor behind a persistent storage id.
    """

    def __init__(
        self,
        file: io.BufferedIOBase,
        source: str,
        module_classes: Iterable[str],
        load_storage: Callable[[torch.dtype, str, int], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(file)
        self.source = source
        self._modules = {name: _stand_in(name) for name in module_classes}
        self._load_storage = load_storage
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in self._modules:
            return self._modules[qualname]
        if qualname in _SAFE_FUNCTIONS:
            return _SAFE_FUNCTIONS[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TokenizerError(
            f"{self.source}: refused to load global {qualname!r}; only plain network weights are "
            f"accepted (allowed: {sorted([*self._modules, *_SAFE_FUNCTIONS])} and torch storage types). "
            "The file may be corrupt or malicious."
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise TokenizerError(f"{self.source}: unexpected persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:  # legacy format: (module, class, file, source)
            return pid[1]
        if kind != "storage" or len(pid) < 5 or self._load_storage is None:
            raise TokenizerError(f"{self.source}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise TokenizerError(f"{self.source}: storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._load_storage(storage_type.dtype, key, int(numel))
        storage = self._storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:  # legacy storage views: (view_key, offset, size)
            _view_key, offset, size = view
            storage = storage[offset : offset + size]
        return storage


def _tensor_from_bytes(data: bytes, dtype: torch.dtype, numel: int, where: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) < numel * itemsize:
        raise TokenizerError(f"{where}: storage holds {len(data)} bytes, expected {numel * itemsize}")
    if numel == 0:
        return torch.empty(0, dtype=dtype)
    # torch.save writes little-endian; a writable copy lets the tensor own its memory.
    return torch.frombuffer(bytearray(data[: numel * itemsize]), dtype=dtype, count=numel)


def _load_zip(path: Path, archive: zipfile.ZipFile, module_classes: Iterable[str]) -> Any:
    names = archive.namelist()
    data_pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(data_pkl) != 1:
        raise TokenizerError(f"{path}: zip archive without exactly one <name>/data.pkl; not a torch.save file")
    prefix = data_pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() not in (b"little", b""):
        raise TokenizerError(f"{path}: big-endian torch archives are not supported")

    file_size = path.stat().st_size

    def load_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        member = f"{prefix}data/{key}"
        if member not in names:
            raise TokenizerError(f"{path}: missing storage {member!r} in the archive")
        # torch.save stores tensors uncompressed, so a storage cannot be larger than the file;
        # refuse before reading, and read no more than the claimed bytes (a compressed member
        # could otherwise inflate to any size).
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if numel < 0 or nbytes > file_size:
            raise TokenizerError(f"{path}: storage {member!r} claims {numel} elements, more than the file holds")
        with archive.open(member) as f:
            return _tensor_from_bytes(f.read(nbytes), dtype, numel, f"{path}:{member}")

    with archive.open(data_pkl[0]) as f:
        return RestrictedUnpickler(io.BufferedReader(f), str(path), module_classes, load_storage).load()


def _load_legacy(path: Path, f: io.BufferedReader, module_classes: Iterable[str]) -> Any:
    # Layout (torch.serialization._legacy_load): magic, protocol, sys_info, the object pickle,
    # the list of storage keys, then per key an int64 element count and the raw bytes.
    def small_pickle() -> Any:
        return RestrictedUnpickler(f, str(path), ()).load()

    if small_pickle() != _LEGACY_MAGIC:
        raise TokenizerError(f"{path}: not a torch.save file (neither a zip archive nor the legacy format)")
    if small_pickle() != _LEGACY_PROTOCOL:
        raise TokenizerError(f"{path}: unsupported legacy torch protocol version")
    small_pickle()  # sys_info: endianness and type sizes
    pending: dict[str, tuple[torch.dtype, int]] = {}
    file_size = path.stat().st_size

    def load_storage(dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        # The bytes come after the object pickle; hand out a placeholder filled in below.
        # A storage cannot be larger than the file: refuse before allocating it.
        if numel < 0 or numel * torch.empty((), dtype=dtype).element_size() > file_size:
            raise TokenizerError(f"{path}: storage {key!r} claims {numel} elements, more than the file holds")
        pending[key] = (dtype, numel)
        return torch.empty(numel, dtype=dtype)

    unpickler = RestrictedUnpickler(f, str(path), module_classes, load_storage)
    result = unpickler.load()
    keys = small_pickle()
    if not isinstance(keys, list):
        raise TokenizerError(f"{path}: malformed legacy storage key list")
    for key in keys:
        key = str(key)
        if key not in pending:
            raise TokenizerError(f"{path}: storage {key!r} listed but never used")
        dtype, numel = pending[key]
        header = f.read(8)
        if len(header) != 8:
            raise TokenizerError(f"{path}: truncated before storage {key!r}")
        (count,) = struct.unpack("<q", header)
        itemsize = torch.empty((), dtype=dtype).element_size()
        data = f.read(count * itemsize)
        if count != numel or len(data) != count * itemsize:
            raise TokenizerError(f"{path}: storage {key!r} truncated or of the wrong size")
        unpickler._storages[key].copy_(_tensor_from_bytes(data, dtype, numel, f"{path}:{key}"))
    return result


def load_module_pickle(path: str | Path, module_classes: Iterable[str]) -> Any:
    """Unpickle a `torch.save`d module from `path`, admitting only `module_classes` (dotted
    class names, mapped onto `PickledModule` stand-ins) plus tensors and inert containers.

    Raises `TokenizerError` naming the file for a missing, corrupt or unsafe file.
    """
    path = Path(path)
    module_classes = tuple(module_classes)
    if not path.is_file():
        raise TokenizerError(f"{path}: file not found")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _load_zip(path, archive, module_classes)
        with open(path, "rb") as f:
            return _load_legacy(path, io.BufferedReader(f), module_classes)  # type: ignore[arg-type]
    except TokenizerError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, zipfile.BadZipFile, struct.error, RuntimeError, MemoryError) as exc:
        # MemoryError: a length-prefixed opcode (BINBYTES8, BINUNICODE8, FRAME) may declare a huge
        # size, which the unpickler allocates before it reads; a 20-byte file can ask for a petabyte.
        raise TokenizerError(f"{path}: not a readable torch.save file ({type(exc).__name__}: {exc})") from None
