"""The ``hart-edu`` command (also ``python -m hart_edu``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hart-edu", description="Learn, run and hack on HART.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="tokenize a photo and held-out scenes: discrete vs hybrid")
    demo.add_argument("--out", default="demo.png", help="PNG to write (default: demo.png)")
    demo.add_argument("--weights", default=None, help="a tokenizer/ folder (default: weights/tiny/tokenizer)")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from hart_edu.demo import main as demo_main

            return demo_main(args.out, args.weights)
    except (FileNotFoundError, ValueError) as err:  # CheckpointError is a ValueError
        print(f"hart-edu {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
