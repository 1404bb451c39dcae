"""A causal LM whose big blocks stay on disk until a forward needs them.

    skeleton     the model built on the meta device (parameters have shapes and dtypes, no
                 memory); small parts (norms, rotary tables) are real and stay resident
    blocks       input embeddings, every decoder layer, the output head: each is filled from
                 its safetensors file when it runs and emptied (back to meta) afterwards, by
                 forward hooks, so any forward (evaluation, a calibration capture) holds one
                 block at a time
    hold/commit  the calibration loop keeps one layer filled while a method rewrites it
                 (`hold`), then `commit` writes the rewritten layer (quantized modules in their
                 portable form) to a scratch shard and empties it; later loads read that shard
    renumber     after depth pruning cut the decoder's layer list, a kept layer is read from
                 its files under the name it had there (`Source.prefix`)

Blocks are filled in place (the module objects never change), so names, hooks and tied
weights stay as the model defines them; a tensor is loaded in the dtype its meta parameter has,
so `cast_float_parts` on the skeleton decides the dtype blocks arrive in, as it would in memory.
`stream.save` writes it back as the folder `compress.quant.serialize` reads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.stream.files import TensorFiles
from compress.stream.heap import trim_heap

log = logging.getLogger(__name__)

ATTR = "_compress_stream"  # the StreamedModel of a skeleton, set on the nn.Module


@dataclass
class Source:
    """Where a block's tensors are: a folder, under which names, which modules are quantized."""

    files: TensorFiles
    specs: dict[str, dict] = field(default_factory=dict)  # sub-module -> spec (with "dtype")
    prefix: str | None = None  # the block's name in its files, when it differs (renumbered)
    _blocks: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def under(self, block: str, sub: str) -> list[str]:
        """Tensor names under `block.sub.` (without that prefix); the block's names are
        looked up once, not on every fill."""
        if block not in self._blocks:
            self._blocks[block] = [k for k in self.files.where if k.startswith(block + ".")]
        prefix = f"{block}.{sub}."
        return [k[len(prefix) :] for k in self._blocks[block] if k.startswith(prefix)]


def of(model: Any) -> StreamedModel | None:
    """The StreamedModel behind `model`, or None for an ordinary in-memory model."""
    return getattr(model, ATTR, None)


def _name_of(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    return next((n for n, m in model.named_modules() if m is module), None)


def skeleton(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """The model of `folder`'s config.json on the meta device (no memory for weights; buffers
    real), tied weights tied (from_config does not tie on meta), in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    return model.eval()


def _is_meta(t: torch.Tensor | None) -> bool:
    return t is not None and t.device.type == "meta"


class StreamedModel:
    """See the module docstring. Build with `open` (a Hugging Face safetensors folder) or
    `open_compressed` (a folder `save` wrote); `variant` gives a second skeleton over the same
    files that commits its rewritten layers to a scratch folder."""

    def __init__(self, model: nn.Module, sources: dict[str, Source], aliases: dict[str, str]):
        from compress.calibration.calibrate import decoder_layers

        self.model = model
        self.sources = sources  # block name -> Source
        self.aliases = aliases  # parameter name -> its name in the files (tied weights)
        self.prefix, layers = decoder_layers(model)
        self.layer_names = [f"{self.prefix}.{i}" for i in range(len(layers))]
        self.resident: dict[str, list] = {}  # block -> [(owner, kind, name, original)]
        self.transient: set[str] = set()
        self.scratch: Path | None = None
        self.peak_blocks = 0  # most blocks filled at once (tests check it stays 1-2)
        self.commits = 0  # layers written to scratch so far (each to its own folder)
        self._hooks: dict[str, list] = {}
        setattr(model, ATTR, self)
        for name in sources:
            self._hook(name)

    def _hook(self, name: str) -> None:
        mod = self.model.get_submodule(name)
        self._hooks[name] = [
            mod.register_forward_pre_hook(self._pre_hook(name)),
            mod.register_forward_hook(self._post_hook(name), always_call=True),
        ]

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | Path, dtype: str = "float32") -> StreamedModel:
        """The model of a Hugging Face folder (config.json + safetensors), blocks on disk."""
        folder = Path(folder)
        files = TensorFiles(folder)
        model = skeleton(folder, getattr(torch, dtype))
        blocks = cls._block_names(model)
        aliases = cls._aliases(model, files)
        cls._fill_resident(model, blocks, files, aliases)
        return cls(model, {b: Source(files) for b in blocks}, aliases)

    @classmethod
    def open_compressed(cls, folder: str | Path) -> StreamedModel:
        """A folder `save` (or `save_compressed`) wrote, reloaded with its blocks on disk."""
        from compress.quant.serialize import MANIFEST, _kind_class
        from compress.targets import set_module

        folder = Path(folder)
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        compute = getattr(torch, manifest["compute_dtype"])
        files = TensorFiles(folder)
        model = skeleton(folder, compute)
        blocks = cls._block_names(model)
        specs: dict[str, dict[str, dict]] = {b: {} for b in blocks}
        for name, spec in manifest["modules"].items():
            block = next((b for b in blocks if name.startswith(b + ".")), None)
            if block is None or spec["kind"] == "int8_embedding":
                raise ValueError(f"{folder}: module {name} ({spec['kind']}) cannot be streamed")
            with torch.device("meta"):
                shell = _kind_class(spec["kind"]).shell(spec, compute)
            set_module(model, name, shell)
            specs[block][name[len(block) + 1 :]] = spec
        aliases = {**cls._aliases(model, files), **manifest.get("tied", {})}
        cls._fill_resident(model, blocks, files, aliases)
        return cls(model, {b: Source(files, specs[b]) for b in blocks}, aliases)

    @staticmethod
    def _block_names(model: nn.Module) -> list[str]:
        from compress.calibration.calibrate import decoder_layers

        prefix, layers = decoder_layers(model)
        names = [_name_of(model, model.get_input_embeddings())]
        names += [f"{prefix}.{i}" for i in range(len(layers))]
        names.append(_name_of(model, model.get_output_embeddings()))
        return [n for n in dict.fromkeys(names) if n]

    @staticmethod
    def _aliases(model: nn.Module, files: TensorFiles) -> dict[str, str]:
        """Tied parameters: each name -> the one of its names the files hold."""
        groups: dict[int, list[str]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(n)
        out = {}
        for names in groups.values():
            held = [n for n in names if n in files]
            if held and len(names) > 1:
                out.update({n: held[0] for n in names if n not in files})
        return out

    @staticmethod
    def _fill_resident(model, blocks, files, aliases) -> None:
        inside = tuple(b + "." for b in blocks)
        for owner_name, owner in model.named_modules():
            for kind, tensors in (("p", owner._parameters), ("b", owner._buffers)):
                for n, t in list(tensors.items()):
                    full = f"{owner_name}.{n}" if owner_name else n
                    if not _is_meta(t) or full.startswith(inside):
                        continue
                    key = aliases.get(full, full)
                    if key not in files:
                        raise ValueError(f"{files.folder}: no tensor '{key}' for {full}")
                    real = files.read([key])[key].to(t.dtype)
                    if kind == "p":
                        tensors[n] = nn.Parameter(real, requires_grad=False)
                    else:
                        tensors[n] = real

    def variant(self, scratch: str | Path) -> StreamedModel:
        """Another skeleton over the same files (a variant's copy of the baseline), committing
        rewritten layers under `scratch`."""
        for b in list(self.resident):
            self.release(b)
        model = copy.deepcopy(self.model)  # meta blocks + small resident parts: cheap
        model.__dict__.pop(ATTR, None)
        for m in model.modules():  # the copy's hooks are registered anew below
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
            m._forward_hooks_always_called.clear()
        out = StreamedModel(model, {b: copy.copy(s) for b, s in self.sources.items()},
                            dict(self.aliases))  # fmt: skip
        out.scratch = Path(scratch)
        return out

    # -- filling and emptying blocks ---------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(_module, _args):
            if name not in self.resident:
                self.fill(name)
                self.transient.add(name)

        return hook

    def _post_hook(self, name: str):
        def hook(_module, _args, _out):
            if name in self.transient:
                self.release(name)

        return hook

    def fill(self, name: str) -> nn.Module:
        """Load block `name` from its source in place (each tensor in its meta dtype)."""
        block = self.model.get_submodule(name)
        if name in self.resident:
            return block
        src = self.sources[name]
        quant = {sub: block.get_submodule(sub) for sub in src.specs}
        slots = []
        for owner_name, owner in block.named_modules():
            if any(owner_name == q or owner_name.startswith(q + ".") for q in quant):
                continue
            full_owner = f"{name}.{owner_name}" if owner_name else name
            for kind, table in (("p", owner._parameters), ("b", owner._buffers)):
                skip = owner._non_persistent_buffers_set if kind == "b" else set()
                for n, t in table.items():
                    if _is_meta(t) and n not in skip:
                        slots.append((owner, kind, n, t, f"{full_owner}.{n}"))
        stored = src.prefix or name

        def key(full: str) -> str:  # a tensor's name in the files
            k = self.aliases.get(full, full)
            return stored + k[len(name) :] if k.startswith(name + ".") else k

        keys = [key(s[4]) for s in slots]
        keys += [f"{stored}.{sub}.{k}" for sub in quant for k in src.under(stored, sub)]
        tensors = src.files.read(keys, {key(s[4]): s[3].dtype for s in slots})
        held = []
        for owner, kind, n, t, full in slots:
            real = tensors.pop(key(full))
            table = owner._parameters if kind == "p" else owner._buffers
            table[n] = nn.Parameter(real, requires_grad=False) if kind == "p" else real
            held.append((owner, kind, n, t))
        for sub, q in quant.items():
            q.to_empty(device="cpu")
            prefix = f"{stored}.{sub}."
            q.load_export({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.resident[name] = held
        self.peak_blocks = max(self.peak_blocks, len(self.resident))
        return block

    def release(self, name: str) -> None:
        """Empty block `name`: its original meta tensors back, anything new moved to meta
        (quantized modules, and plain modules a method swapped in, e.g. sliced Linears)."""
        held = self.resident.pop(name, None)
        self.transient.discard(name)
        if held is None:
            return
        for owner, kind, n, original in held:
            (owner._parameters if kind == "p" else owner._buffers)[n] = original
        for m in self.model.get_submodule(name).modules():
            if getattr(m, "kind", None):  # quantized modules (loaded, or swapped in by a method)
                m.to("meta")
                continue
            for n, p in m._parameters.items():
                if p is not None and not _is_meta(p):
                    m._parameters[n] = nn.Parameter(p.to("meta"), requires_grad=False)
        trim_heap()

    def hold(self, name: str) -> nn.Module:
        """Fill block `name` and keep it filled across forwards until release/commit."""
        block = self.fill(name)
        self.transient.discard(name)
        return block

    def weight_bytes(self) -> int:
        """Bytes of weights as held in memory, measured block by block (each filled, counted
        with `profile.memory.weight_bytes`, emptied), tied weights once, plus the resident
        parts: the same count as for the model in memory, never read off meta shapes."""
        from compress.profile.memory import storage_bytes, weight_bytes
        from compress.quant.serialize import _persistent_buffers

        tied = self._tied()
        total = 0
        for b in self.sources:
            if self._all_tied(b, tied):
                continue
            was = b in self.resident
            total += weight_bytes(self.fill(b))
            if not was:
                self.release(b)
        inside = tuple(b + "." for b in self.sources)
        named = list(self.model.named_parameters()) + _persistent_buffers(self.model)
        return total + storage_bytes(
            t for n, t in named if not n.startswith(inside) and not _is_meta(t)
        )

    # -- writing -------------------------------------------------------------------------------
    def block_tensors(self, name: str) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """A filled block's tensors as saved (quantized modules in portable form) and the
        specs of its quantized modules."""
        from compress.quant.serialize import block_export

        return block_export(self.model.get_submodule(name), name)

    def commit(self, name: str) -> None:
        """Write held block `name` (as rewritten) to a new folder under scratch, then empty
        it; the folder it was read from before is removed when it was scratch and unused."""
        from safetensors.torch import save_file

        if self.scratch is None:
            raise RuntimeError("commit needs a variant (a scratch folder to write to)")
        tensors, specs = self.block_tensors(name)
        self.commits += 1
        folder = self.scratch / f"{name}.{self.commits}"  # one folder, one file per block
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "model.safetensors")
        old = self.sources[name].files.folder
        self.sources[name] = Source(TensorFiles(folder), specs)
        self.release(name)
        self._forget(old)

    def _forget(self, folder: Path) -> None:
        """Remove a scratch folder no block reads any more."""
        import shutil

        if self.scratch is None or folder.parent != self.scratch:
            return
        if not any(s.files.folder == folder for s in self.sources.values()):
            shutil.rmtree(folder, ignore_errors=True)

    def renumber(self, kept: list[int]) -> None:
        """The decoder's layer list was cut to the old layers `kept` (new layer j is old layer
        kept[j], same module): blocks renamed to match, each still read from its files under
        its old name; dropped layers' blocks forgotten (their scratch folders removed)."""
        from compress.calibration.calibrate import decoder_layers

        if self.resident:
            raise RuntimeError(f"renumber with blocks filled: {sorted(self.resident)}")
        old_names = self.layer_names
        _, layers = decoder_layers(self.model)
        if len(layers) != len(kept):
            raise ValueError(f"{len(layers)} layers in the model, {len(kept)} kept")
        for n in old_names:
            for h in self._hooks.pop(n):
                h.remove()
        order = list(self.sources)
        first = order.index(old_names[0])
        rest = [b for b in order[first:] if b not in old_names]
        old = self.sources
        self.layer_names = [f"{self.prefix}.{j}" for j in range(len(kept))]
        self.sources = {b: old[b] for b in order[:first]}
        for new, i in zip(self.layer_names, kept, strict=True):
            src = old[old_names[i]]
            self.sources[new] = dataclasses.replace(src, prefix=src.prefix or old_names[i])
        self.sources.update({b: old[b] for b in rest})
        for n in self.layer_names:
            self._hook(n)
        for i in sorted(set(range(len(old_names))) - set(kept)):
            self._forget(old[old_names[i]].files.folder)

    def _tied(self) -> dict[str, str]:
        """{alias: kept name} for parameters shared between names (as save_compressed)."""
        first: dict[int, str] = {}
        out = {}
        for n, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in first:
                out[n] = first[id(p)]
            else:
                first[id(p)] = n
        return out

    def _all_tied(self, block: str, tied: dict[str, str]) -> bool:
        """A block whose every weight is another's (a tied output head) is not written."""
        names = [f"{block}.{n}" for n, _ in self.model.get_submodule(block).named_parameters()]
        return bool(names) and all(n in tied for n in names)
