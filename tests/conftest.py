import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)

SHARED_DATA = Path(os.environ.get("ASYMLORA_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
