"""Where the reference material lives: `../shared` beside the checkout (as in CI)."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
VECTORS = SHARED / "vectors"
FIXTURES = SHARED / "fixtures"
