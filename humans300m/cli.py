"""``humans300m SUBCOMMAND [ARGS]``: every entry point of the project under one command.

Each subcommand hands its arguments to the module's own ``main``, so ``humans300m build ARGS``
behaves exactly as ``python -m pipeline.build_humans300m ARGS`` (the form ``ray job submit``
uses). Modules are imported only when their subcommand runs: ``humans300m --help`` and
``--version`` start in well under a second, without Ray or torch.
"""

from __future__ import annotations

import importlib
import sys

from schemas.version import version_line

# subcommand -> (module whose main(argv) runs it, one-line description)
COMMANDS = {
    "build": ("pipeline.build_humans300m", "run the curation job (crawl, filter, dedup, shard)"),
    "query": ("curation.query", "SQL over a dataset's samples, persons and rejections"),
    "report": ("curation.report", "write a dataset's HTML report, stats.json and data card"),
    "subset": ("curation.subset", "write the samples matching a predicate as a new dataset"),
    "export": ("curation.export", "export a dataset to img2dataset's layout"),
    "pretrain": ("training.pretrain", "MAE pretraining on a dataset (Ray Train)"),
    "finetune": ("training.finetune", "fine-tune a pretrained encoder on a Sapiens task"),
    "evaluate": ("training.evaluate", "evaluate a fine-tuned checkpoint on labelled data"),
    "predict": ("training.predict", "run a fine-tuned checkpoint on images"),
    "convert": ("training.convert", "convert COCO or image/label folders to labelled shards"),
    "checkpoint": ("training.checkpoint", "export a pretraining run's encoder"),
    "import-sapiens": ("training.import_sapiens", "import Meta's released Sapiens checkpoints"),
    "synthetic-labels": ("training.tasks.synthetic", "write synthetic labelled shards"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    return (
        "usage: humans300m [--version] SUBCOMMAND [ARGS]   (humans300m SUBCOMMAND --help)\n\n"
        "subcommands:\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return 0 if argv else 2
    if argv[0] == "--version" or argv[1:] == ["--version"]:
        print(version_line())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"humans300m: unknown subcommand {name!r}\n\n{usage()}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    return code if isinstance(code, int) else 0
