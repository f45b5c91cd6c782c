"""``python -m hart_edu.parity DIR`` and ``python -m hart_edu.parity --manifest FILE``."""

from __future__ import annotations

import argparse
import sys

import torch

from hart_edu.kernels.backend import BACKENDS
from hart_edu.parity import format_table, run_parity, summary_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hart_edu.parity",
        description="Recompute the official HART golden tensors with hart_edu and compare them.",
    )
    parser.add_argument("golden_dir", nargs="?", help="folder with tiny-golden.json, "
                        "tiny-golden.safetensors and tiny-official/ (e.g. tests/golden)")
    parser.add_argument("--manifest", metavar="FILE",
                        help="instead: compare the released architecture, built on the meta "
                             "device, with manifest-hart-0.7b-1024px.json")
    parser.add_argument("--backend", choices=BACKENDS, default="reference",
                        help="kernel backend the producers run with (default: reference); 'triton' "
                             "needs a CUDA device or TRITON_INTERPRET=1 in the environment")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the models and inputs (default: cpu); with "
                             "--backend triton on a GPU: cuda")
    args = parser.parse_args(argv)
    if (args.golden_dir is None) == (args.manifest is None):
        parser.error("give either a golden folder or --manifest FILE")

    if args.manifest is not None:
        from hart_edu.parity.manifest import check_manifest, format_manifest

        try:
            results = check_manifest(args.manifest)
        except (OSError, ValueError) as err:  # a missing, unreadable or malformed manifest
            print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 2
        print(format_manifest(results))
        return 0 if all(r.ok for r in results) else 1

    try:
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"--device {args.device}: no CUDA device is available here")
        checks, errors = run_parity(args.golden_dir, backend=args.backend, device=args.device)
    except (FileNotFoundError, RuntimeError) as err:  # RuntimeError: the Triton backend cannot run here
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(checks))
    for err in errors:
        print(f"producer error: {err}")
    print(summary_line(checks))
    bad = [c for c in checks if c.status == "MISMATCH"]
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
