"""Pulumi entry point (`main: infra/` in Pulumi.yaml): compose the stack from its config."""

import pulumi

from infra.settings import SettingsError
from infra.stack import define_stack

try:
    define_stack()
except SettingsError as exc:
    # RunError ends the program with the message alone: every bad key, no traceback.
    raise pulumi.RunError(str(exc)) from None
