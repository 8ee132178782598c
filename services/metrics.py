"""Every Prometheus metric vagent exports, declared once.

Each service process has its own registry, served at GET /metrics. Keeping
the declarations together means one page lists what an admin can graph.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

BREAKER_STATE = Gauge(
    "vagent_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "vagent_breaker_transitions_total",
    "Circuit breaker state changes per dependency and new state.",
    ["dependency", "state"],
    registry=REGISTRY,
)
DEPENDENCY_FAILURES = Counter(
    "vagent_dependency_failures_total",
    "Failed attempts at a dependency, by error kind (transient, permanent, breaker_open).",
    ["dependency", "kind"],
    registry=REGISTRY,
)
HEALTH_CHECK_STATUS = Gauge(
    "vagent_health_check_status",
    "Last result of each /health check: 0 pass, 1 warn, 2 fail.",
    ["check"],
    registry=REGISTRY,
)
SERVICE_HEALTH = Gauge(
    "vagent_service_health",
    "Aggregated service health: 0 healthy, 1 degraded, 2 unhealthy.",
    registry=REGISTRY,
)
WORKER_BEATS = Counter(
    "vagent_worker_heartbeats_total",
    "Heartbeats the service's worker wrote to Redis, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
BUS_MESSAGES = Counter(
    "vagent_bus_messages_total",
    "Bus entries by stream and outcome: handled, expired (deadline passed), duplicate, "
    "claimed (from a dead consumer), failed, dead_letter.",
    ["stream", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "vagent_dead_letters_total",
    "Entries sent to the dead-letter stream, by source stream.",
    ["stream"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "vagent_fallbacks_total",
    "Providers that failed in a fallback chain, by stage, provider and reason.",
    ["stage", "provider", "reason"],
    registry=REGISTRY,
)
SERVED = Counter(
    "vagent_stage_served_total",
    "Turn stages served, by stage and the kind of provider that served them.",
    ["stage", "kind"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "vagent_stage_seconds",
    "Time a stage took in a turn (llm: to the first sentence), by stage.",
    ["stage"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
    registry=REGISTRY,
)
SILENT_TURNS = Counter(
    "vagent_silent_turns_total",
    "Turns that ended with no audio and no spoken fallback, by stage.",
    ["stage"],
    registry=REGISTRY,
)
ARI_CONNECTED = Gauge(
    "vagent_ari_connected",
    "1 while the ARI events websocket is connected.",
    registry=REGISTRY,
)
ARI_BAD_EVENTS = Counter(
    "vagent_ari_bad_events_total",
    "ARI frames that were not events, or whose handling failed.",
    registry=REGISTRY,
)
ACTIVE_CALLS = Gauge(
    "vagent_active_calls",
    "Calls the controller is handling now.",
    registry=REGISTRY,
)
CALL_EVENTS = Counter(
    "vagent_call_events_total",
    "Call flow events: started, refused (draining), ended, barge_in, barge_in_discarded, "
    "filler, error_prompt, characters, turn_sent_again (no reply yet at the budget), "
    "resumed and adopted (calls a dead controller left).",
    ["event"],
    registry=REGISTRY,
)
FIRST_AUDIO_SECONDS = Histogram(
    "vagent_first_audio_seconds",
    "From the end of the caller's utterance to the first agent audio.",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0),
    registry=REGISTRY,
)
DRILL_FAULTS_ACTIVE = Gauge(
    "vagent_drill_faults_active",
    "1 while a drill (vagent simulate-failure) faults this target in this service.",
    ["target"],
    registry=REGISTRY,
)
DRILL_FAULTS = Counter(
    "vagent_drill_faults_total",
    "Drills injected into this service, by target and mode (error, timeout, slow).",
    ["target", "mode"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)


# One counter for every parser of outside input, so one graph shows what the
# world sent that vagent refused. `reason` is a short fixed label chosen by the
# parser, never the input itself (unbounded label values would blow up Prometheus).
REJECTED_INPUT = Counter(
    "vagent_rejected_input_total",
    "Outside input refused as malformed, by source (ari_event, rtp, rtpengine, bus, openai) "
    "and reason.",
    ["source", "reason"],
    registry=REGISTRY,
)
