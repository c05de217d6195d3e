"""Shutdown and connection timings, derived in one place so the ALB, the pod and the server agree.

A streamed LLM response can last `longest_stream_seconds`. For a rollout or scale-in to drop no
request, the chain must hold:
  ALB idle timeout >= longest stream          (the ALB must not cut a slow stream)
  server keep-alive > ALB idle timeout         (the ALB, not the server, closes idle connections)
  preStop sleep: 15-30 s                       (the ALB stops routing before the pod stops)
  graceful shutdown = longest stream           (in-flight streams finish)
  terminationGracePeriod > preStop + graceful  (kubelet does not SIGKILL a draining pod)
  deregistration delay > preStop + stream      (the target stays registered while it drains)
  upstream deadline < ALB idle timeout         (a request the provider leaves unanswered gets the
                                                gateway's OpenAI-shaped 504, not the ALB's own)
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings import StackSettings

PRE_STOP_SLEEP_SECONDS = 20
# ALB idle timeout must be 1-4000 s.
ALB_IDLE_TIMEOUT_MAX = 4000
# Target group deregistration delay must be 0-3600 s.
DEREGISTRATION_DELAY_MAX = 3600
# The gateway gives up on the provider this long before the ALB would close the connection.
UPSTREAM_DEADLINE_MARGIN_S = 5


@dataclass(frozen=True)
class ShutdownTimings:
    alb_idle_timeout_s: int
    server_keepalive_s: int
    pre_stop_sleep_s: int
    graceful_shutdown_s: int
    termination_grace_period_s: int
    deregistration_delay_s: int
    upstream_deadline_s: int

    @classmethod
    def from_settings(cls, settings: StackSettings) -> ShutdownTimings:
        return cls.for_stream(settings.longest_stream_seconds)

    @classmethod
    def for_stream(cls, longest_stream_s: int) -> ShutdownTimings:
        idle = min(max(longest_stream_s, 60), ALB_IDLE_TIMEOUT_MAX)
        pre_stop = PRE_STOP_SLEEP_SECONDS
        graceful = longest_stream_s
        return cls(
            alb_idle_timeout_s=idle,
            server_keepalive_s=idle + 10,
            pre_stop_sleep_s=pre_stop,
            graceful_shutdown_s=graceful,
            termination_grace_period_s=pre_stop + graceful + 10,
            deregistration_delay_s=min(pre_stop + longest_stream_s + 5, DEREGISTRATION_DELAY_MAX),
            upstream_deadline_s=idle - UPSTREAM_DEADLINE_MARGIN_S,
        )
