"""Pulumi entry point (`main: infra/` in Pulumi.yaml): compose the stack from its config."""

from infra.stack import define_stack

define_stack()
