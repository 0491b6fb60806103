"""Where things are: the repository root and the captured payloads, wherever a test file sits."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"  # captured Key Vault events
CONTRACT = ROOT / "tests" / "contract"  # bodies in the published examples' shapes
