"""All GPU measurements in one call (vit_exp.device_check): python scripts/device_check.py [--dry-run] [--out DIR].

Runs before the carried wheels are installed (it installs them): the package is found in src/ of this checkout.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vit_exp.device_check import main

if __name__ == "__main__":
    main()
