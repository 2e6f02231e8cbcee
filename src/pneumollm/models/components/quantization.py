"""Low-memory frozen LLM trunks: bitsandbytes nf4 / int8 linear layers, and what each costs in bytes.

Only the trunk's ``nn.Linear`` layers are quantised (q/k/v/o and the MLP of every decoder layer); norms, the
vision encoder and every trainable part keep their dtype. Pretrained loads quantise while loading
(transformers' ``BitsAndBytesConfig``); random builds quantise each decoder layer right after it is
initialised (``quantize_linears``), so no full-precision copy of the trunk ever exists.

Bytes per quantised ``[out, in]`` weight with n = out x in (bitsandbytes 0.46+, ``bitsandbytes.functional``):

- int8 (LLM.int8, ``Linear8bitLt``): n int8 values + one float32 scale per output row: ``n + 4 out``.
- nf4 (``Linear4bit``, block size 64, ``quantize_4bit``'s default): two 4-bit codes per byte + one float32
  absmax per block + the 16-entry float32 code table: ``n/2 + 4 ceil(n/64) + 64``, about 0.5625 byte/weight.
- nf4 with double quantisation (``compress_statistics``, QLoRA): the absmax constants themselves quantised
  to 8 bits in blocks of 256 (``quantize_blockwise(absmax - offset, blocksize=256)``):
  ``n/2 + ceil(n/64) + 4 ceil(ceil(n/64)/256) + 4 + 1024 + 64``, about 0.5159 byte/weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

QUANTIZATION_METHODS = ("nf4", "int8")
NF4_BLOCKSIZE = 64  # bitsandbytes' quantize_4bit default
NESTED_BLOCKSIZE = 256  # bitsandbytes' block size for the quantised absmax constants (double quantisation)


class QuantizationUnavailableError(RuntimeError):
    """Raised when nf4/int8 is requested but bitsandbytes is missing or cannot run on the device."""


@dataclass(frozen=True)
class QuantSpec:
    """How the trunk's linear layers are stored: ``method`` nf4 or int8.

    ``double_quant`` (nf4): quantise the per-block absmax constants too (QLoRA's setting; 0.516 instead of
    0.5625 byte per weight). ``int8_threshold``: LLM.int8's outlier threshold (bitsandbytes' default 6.0).
    """

    method: str
    double_quant: bool = True
    int8_threshold: float = 6.0

    def __post_init__(self) -> None:
        if self.method not in QUANTIZATION_METHODS:
            raise ValueError(f"unknown quantization {self.method!r}; choose null or one of {QUANTIZATION_METHODS}")

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | QuantSpec | None) -> QuantSpec | None:
        """``None``/``"none"`` -> no quantisation; ``"nf4"``/``"int8"``; or a mapping of the fields."""
        if value is None or isinstance(value, QuantSpec):
            return value
        if isinstance(value, str):
            return None if value.lower() in {"none", "null", ""} else cls(method=value)
        values = dict(value)
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown quantization option(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)

    @property
    def label(self) -> str:
        return f"{self.method}{'+dq' if self.method == 'nf4' and self.double_quant else ''}"

    def weight_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes that one quantised ``[out_features, in_features]`` weight occupies (formulas in the module doc)."""
        n = out_features * in_features
        if self.method == "int8":
            return n + 4 * out_features
        blocks = math.ceil(n / NF4_BLOCKSIZE)
        code_table = 16 * 4
        if not self.double_quant:
            return math.ceil(n / 2) + 4 * blocks + code_table
        nested = math.ceil(blocks / NESTED_BLOCKSIZE)
        return math.ceil(n / 2) + blocks + 4 * nested + 4 + 256 * 4 + code_table

    def bitsandbytes_config(self, compute_dtype: torch.dtype) -> Any:
        """The transformers ``BitsAndBytesConfig`` for ``from_pretrained`` with the same settings."""
        from transformers import BitsAndBytesConfig

        if self.method == "int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_use_double_quant=self.double_quant)

    def quantize(self, linear: nn.Linear, compute_dtype: torch.dtype, device: torch.device) -> nn.Module:
        """A bitsandbytes copy of ``linear`` (weights quantised on ``device``), frozen."""
        bnb = require_bitsandbytes(self, device)
        weight = linear.weight.detach()
        with torch.device("meta"):  # the constructors would allocate a full-precision weight otherwise
            if self.method == "int8":
                new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, linear.bias is not None,
                                          has_fp16_weights=False, threshold=self.int8_threshold)
            else:
                new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, linear.bias is not None,
                                        compute_dtype=compute_dtype, compress_statistics=self.double_quant,
                                        quant_type="nf4")
        if self.method == "int8":
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4",
                                           compress_statistics=self.double_quant, blocksize=NF4_BLOCKSIZE)
        if linear.bias is not None:
            new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return new.to(device)  # bitsandbytes quantises on the first move to a real device


def require_bitsandbytes(spec: QuantSpec, device: torch.device | str) -> Any:
    """The ``bitsandbytes`` module, or a clear error when it is missing or has no backend for ``device``."""
    device = torch.device(device)
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise QuantizationUnavailableError(
            f"llm.quantization={spec.method} needs the bitsandbytes package: pip install 'pneumollm[quant]'") from err
    supported = getattr(bnb, "supported_torch_devices", {"cuda"})
    if device.type not in supported:
        raise QuantizationUnavailableError(
            f"bitsandbytes {bnb.__version__} cannot run {spec.method} on {device.type} (it supports "
            f"{sorted(supported)}); use a CUDA GPU, a bitsandbytes release with a {device.type} backend "
            "(0.50 has a CPU one), or llm.quantization=null")
    return bnb


def is_quantized(module: nn.Module) -> bool:
    """True for bitsandbytes linear layers (their weights cannot take folded adapters)."""
    return type(module).__module__.startswith("bitsandbytes")


def quantizable_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The plain ``nn.Linear`` layers a quantised build converts: every one except an LM head."""
    for name, module in model.named_modules():
        if type(module) is nn.Linear and name.rpartition(".")[2] != "lm_head":
            yield name, module


def quantize_linears(module: nn.Module, spec: QuantSpec, compute_dtype: torch.dtype, device: torch.device) -> int:
    """Replace every ``quantizable_linears`` layer of ``module`` by its bitsandbytes copy; returns how many."""
    names = [name for name, _ in quantizable_linears(module) if name]
    for name in names:
        module.set_submodule(name, spec.quantize(module.get_submodule(name), compute_dtype, device))
    return len(names)
