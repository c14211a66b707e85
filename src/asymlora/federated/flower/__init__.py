"""Flower runtime: a ServerApp, a ClientApp and one Strategy per method, running the same client
and server code as the in-process engine, in Flower's simulation engine (Ray) or its deployment
engine (a SuperLink and SuperNodes). The only part of asymlora that imports flwr."""

from __future__ import annotations

import os

# Never phone home, never pip-install at run time (set before flwr is imported).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
