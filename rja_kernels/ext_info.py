"""Which compiled extensions this installation has: `python -m rja_kernels.ext_info`."""

from __future__ import annotations

import importlib
import sys


def extension_status() -> dict[str, str]:
    """Module name -> 'built (<path>)' or the reason it cannot be imported."""
    status = {}
    for module in ("rja_kernels._C", "rja_kernels._C_cuda", "rja_kernels._C_cuda_emu"):
        try:
            status[module] = f"built ({importlib.import_module(module).__file__})"
        except ImportError as err:
            status[module] = f"not available: {err}"
    return status


def main() -> None:
    """Print the status; `--require-cuda` also fails when the CUDA extension is missing."""
    status = extension_status()
    for module, line in status.items():
        print(f"{module}: {line}")
    required = ["rja_kernels._C"] + (["rja_kernels._C_cuda"] if "--require-cuda" in sys.argv else [])
    missing = [m for m in required if not status[m].startswith("built")]
    if missing:
        sys.exit(f"required extension(s) not built: {', '.join(missing)}")


if __name__ == "__main__":
    main()
