"""The fine-tuning tasks by name. A new task is a ``Task`` (``training.tasks.task``) in its own
module, listed here, with its labelled data described in ``schemas.labelled``."""

from __future__ import annotations

from training.tasks.depth import DEPTH
from training.tasks.normal import NORMAL
from training.tasks.pose import POSE
from training.tasks.seg import SEG
from training.tasks.task import Task

TASKS_BY_NAME: dict[str, Task] = {t.name: t for t in (POSE, SEG, DEPTH, NORMAL)}
