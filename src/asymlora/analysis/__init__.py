"""Why sharing B works: subspace similarity, magnitude/direction change, gradient conflicts, gates.

The measures are plain-torch functions on tensors; plotting (matplotlib) and the adapter-directory
commands live in submodules so importing the measures stays light.
"""

from __future__ import annotations

from .conflicts import (
    ConflictStats,
    conflict_stats,
    gradient_conflicts,
    shared_A_components,
    shared_B_components,
)
from .dynamics import column_magnitude_direction, magnitude_direction_change
from .gates import mean_gates
from .similarity import (
    DegenerateSubspaceError,
    orthonormal_basis,
    similarity_of_A,
    similarity_of_B,
    subspace_similarity,
)

# Heavier entry points (matplotlib, transformers' callbacks), imported on first use.
_LAZY = {
    "run_similarity": ".compare",
    "run_dynamics": ".compare",
    "load_adapter_factors": ".adapter_files",
    "GradientConflictRecorder": ".recorder",
    "GradientConflictCallback": ".recorder",
    "AdapterSnapshotCallback": ".recorder",
    "collect_example_gates": ".gates",
    "gate_map": ".gates",
    "GateMapCallback": ".gates",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "ConflictStats",
    "DegenerateSubspaceError",
    "column_magnitude_direction",
    "conflict_stats",
    "gradient_conflicts",
    "magnitude_direction_change",
    "mean_gates",
    "orthonormal_basis",
    "shared_A_components",
    "shared_B_components",
    "similarity_of_A",
    "similarity_of_B",
    "subspace_similarity",
]
