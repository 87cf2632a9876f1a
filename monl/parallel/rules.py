"""Logical-axis rule sets: how each logical name of `monl.models.layers` maps onto mesh axes.

Names not listed are replicated. Selected by `config.mesh.rules`:
  dp       pure data parallel: batch over every device, all parameters replicated.
  fsdp     + parameters sharded along their `embed` dimension over the `fsdp` axis (ZeRO-3 style); the
           second kernel of an mlp output head [head_mlp, patch] along `head_mlp`.
  fsdp_tp  + heads and MLP hidden units split over `tensor`, tokens over `sequence`.
"""
from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

_BATCH = ("batch", ("data", "fsdp"))

RULE_SETS: dict[str, tuple[tuple[str, object], ...]] = {
    "dp": (_BATCH,),
    "fsdp": (_BATCH, ("embed", "fsdp"), ("head_mlp", "fsdp")),
    "fsdp_tp": (
        _BATCH,
        ("embed", "fsdp"),
        ("head_mlp", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("act_heads", "tensor"),
        ("act_mlp", "tensor"),
        ("length", "sequence"),
    ),
}


def get_rules(name: str) -> tuple[tuple[str, object], ...]:
  if name not in RULE_SETS:
    raise ValueError(f"config.mesh.rules={name!r}: known rule sets are {sorted(RULE_SETS)}")
  return RULE_SETS[name]
