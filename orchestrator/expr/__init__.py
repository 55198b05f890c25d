"""The one safe expression language of nero: rules, run selectors and status filters (pure).

- `tree`: the syntax tree (frozen dataclasses) and `unparse`, which writes it back as text;
- `parser`: the grammar, its limits and its messages: `parse`, `parse_at`, `names`;
- `evaluation`: the `Facts` of one run and what an expression means for them: `evaluate`,
  `truth`, `explain`, `goal_of` (a metric's default goal direction);
- `selectors`: run selectors (`crashed,144-149,lr-sweep*, val_err < 0.2`, `demo* and loss > 1`),
  whose run numbers, state words and id globs are conditions too: `parse_selector`.

Every grammar reads its text as the tokens of `orchestrator.tokens`; numbers and durations are
read and written by `orchestrator.units`.
"""

from . import evaluation, parser, selectors, tree
from .evaluation import *  # noqa: F403
from .parser import *  # noqa: F403
from .selectors import *  # noqa: F403
from .tree import *  # noqa: F403

__all__ = [*tree.__all__, *parser.__all__, *evaluation.__all__, *selectors.__all__]
