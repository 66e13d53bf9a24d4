"""The rule engine: SpamAssassin-syntax rule files compiled to one multi-pattern scan per buffer.

Pipeline: :mod:`.parser` (files -> :class:`RuleDef` + problems with file:line)
-> :mod:`.compiler` (Perl regexes translated and checked by :mod:`.regex`,
metas compiled, rules grouped by buffer) -> :mod:`.matcher` (Hyperscan or the
pure-Python engine, same hits) -> :mod:`.check` (the engine's ``rules`` check).
:mod:`.evals` holds the ``eval:`` functions, :mod:`.fit` score fitting, and
:mod:`.cli` the ``antispam rules`` commands.
"""

from .check import LoadedRules, RuleHits, RulesCheck, load_rules, rules_check
from .compiler import CompiledRules, compile_rules
from .parser import ParsedRules, Problem, parse_paths

__all__ = ["LoadedRules", "RuleHits", "RulesCheck", "load_rules", "rules_check", "CompiledRules",
           "compile_rules", "ParsedRules", "Problem", "parse_paths"]
