"""Which node may play which client: under Flower's SuperNode authentication each node has a public
key the SuperLink knows; `node_keys` in the config maps each client (partition) to the public key of
the node allowed to play it, so a node claiming another partition is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union


class IdentityError(ValueError):
    """A key file that cannot be read, or a mapping that cannot be one."""


def public_key_der(key: Union[bytes, str, Path]) -> bytes:
    """A public key (OpenSSH, PEM or DER; bytes or a file) as DER SubjectPublicKeyInfo, so the same
    key compares equal whatever its encoding."""
    from cryptography.hazmat.primitives import serialization

    data = Path(key).read_bytes() if isinstance(key, (str, Path)) else bytes(key)
    for load in (serialization.load_ssh_public_key, serialization.load_pem_public_key,
                 serialization.load_der_public_key):
        try:
            public = load(data.strip() if load is not serialization.load_der_public_key else data)
        except (ValueError, TypeError, Exception):  # noqa: B014  (each loader raises its own kinds)
            continue
        return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    raise IdentityError(f"{key if isinstance(key, (str, Path)) else 'key'}: not a public key "
                        "(OpenSSH, PEM or DER)")


def key_map(node_keys: Optional[Mapping[Any, Any]], n_clients: int) -> dict[bytes, int]:
    """public key (DER) -> partition, from the config's `node_keys: {partition: key file}`."""
    if not node_keys:
        return {}
    out: dict[bytes, int] = {}
    for partition, path in node_keys.items():
        try:
            pid = int(partition)
        except (TypeError, ValueError):
            raise IdentityError(f"node_keys: {partition!r} is not a client id") from None
        if not 0 <= pid < n_clients:
            raise IdentityError(f"node_keys: client {pid} is outside the run (0..{n_clients - 1})")
        if not isinstance(path, str) or not Path(path).is_file():
            raise IdentityError(f"node_keys: client {pid}: public key file not found: {path!r}")
        der = public_key_der(path)
        if der in out:
            raise IdentityError(f"node_keys: clients {out[der]} and {pid} have the same public key")
        out[der] = pid
    return out
