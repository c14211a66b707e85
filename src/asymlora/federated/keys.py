"""Reading adapter state-dict keys: which module a tensor belongs to, which factor it is, and
(for several adapters on one layer, as in FedDPA) which adapter.

Keys come in the spellings PEFT produces: `get_peft_model_state_dict` gives
`<module>.lora_A.weight`; a model's raw `state_dict()` gives `<module>.lora_A.<adapter>.weight`;
the decomposed layer's parameter and buffer dicts give `<module>.declora_B1.<adapter>`. All are
accepted, so the algorithms work on whichever the engine hands them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import torch

StateDict = dict[str, torch.Tensor]

# Longest names first, so that "declora_A0" is never read as "declora_A".
ROLES: tuple[str, ...] = (
    "declora_A0", "declora_A1", "declora_A2", "declora_B0", "declora_B1", "declora_B2",
    "declora_A", "declora_B", "declora_M", "lora_A", "lora_B",
)

_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<role>" + "|".join(ROLES) + r")"
    r"(?:\.(?P<adapter>(?!weight$)[^.]+))?(?:\.weight)?$"
)


@dataclass(frozen=True)
class KeyParts:
    module: str
    role: str
    adapter: Optional[str]


def parse_key(key: str) -> Optional[KeyParts]:
    """The parts of an adapter key, or None for a key that is no adapter factor."""
    m = _KEY.match(key)
    if m is None:
        return None
    return KeyParts(m["module"], m["role"], m["adapter"])


def role_of(key: str) -> Optional[str]:
    parts = parse_key(key)
    return None if parts is None else parts.role


def with_role(key: str, role: str) -> str:
    """The same key spelling for another factor of the same module (B1 key -> B0 key)."""
    parts = parse_key(key)
    if parts is None:
        raise KeyError(f"{key!r} is not an adapter key (expected one of the factors {', '.join(ROLES)})")
    suffix = key[len(parts.module) + 1 + len(parts.role):]
    return f"{parts.module}.{role}{suffix}"


def select(state: Mapping[str, torch.Tensor], roles: Iterable[str],
           adapter: Optional[str] = None) -> StateDict:
    """The entries of `state` whose factor is in `roles` (and, if given, belong to `adapter`)."""
    wanted = frozenset(roles)
    out: StateDict = {}
    for key, value in state.items():
        parts = parse_key(key)
        if parts is None or parts.role not in wanted:
            continue
        if adapter is not None and parts.adapter != adapter:
            continue
        out[key] = value
    return out


def group_by_module(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, str]]:
    """module -> {role: key}; raises if a module has the same factor twice (two adapters mixed)."""
    groups: dict[str, dict[str, str]] = {}
    for key in tensors:
        parts = parse_key(key)
        if parts is None:
            raise KeyError(f"{key!r} is not an adapter key (expected one of the factors {', '.join(ROLES)})")
        roles = groups.setdefault(parts.module, {})
        if parts.role in roles:
            raise KeyError(f"module {parts.module!r} has {parts.role} twice: {roles[parts.role]!r} and {key!r}")
        roles[parts.role] = key
    return groups


def describe_keys(keys: Iterable[str], limit: int = 3) -> str:
    """A short listing for error messages: the first few keys and how many more."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
