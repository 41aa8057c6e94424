"""`python -m pipeline <stage> [args]`: run one pipeline stage, as every `cmd` in dvc.yaml does.

The same as ``python -m pipeline.<stage> [args]``, except that under ``python -m pipeline.warm`` (what
``make repro`` runs) the stage starts from a warm server with torch, torchvision and MLflow already imported
(``pipeline/warm.py``). This module imports nothing heavy itself.
"""

import sys

from pipeline.warm import run_stage

STAGES = ("code", "download", "degrade", "pretrain_sr", "train", "evaluate", "report", "track")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        print(f"usage: python -m pipeline {{{','.join(STAGES)}}} [stage arguments]\n\n{__doc__.splitlines()[0]}\n"
              f"`python -m pipeline <stage> --help` describes a stage.",
              file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown stage {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return run_stage(f"pipeline.{argv[0]}", argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
