"""Domain rules of the national databases: validators and makers for personal IDs, enterprise codes and insurance codes.

Every validator raises a subclass of `RuleError` (a ValueError) whose message names what is wrong and whose `field`
names the input; `RuleError.to_problem()` turns it into the 400 problem the APIs answer with. Messages never repeat
the value itself, so they are safe to log.
"""

from connectors.rules.errors import RuleError

__all__ = ["RuleError"]
