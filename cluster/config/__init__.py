"""The cluster config: schema (typed models), loading (YAML, overrides, errors), cross-field
checks, and the builder of runtime objects (``plan``). Import from here."""

from cluster.config.checks import check_config, check_domain_sched, pool_scheduler
from cluster.config.loading import (
    apply_overrides,
    config_digest,
    format_validation_error,
    json_schema,
    load_config,
    load_doc,
    resolved_doc,
    validate_doc,
)
from cluster.config.plan import Plan, TimedEvent, build_plan, host_spec
from cluster.config.schema import (
    ACTIONS,
    NAME_PATTERN,
    Action,
    ClusterConfig,
    DomainCfg,
    EventCfg,
    HostCfg,
    MigrateAction,
    MigrationCfg,
    RunCfg,
)
from cluster.errors import ConfigError

__all__ = [
    "ACTIONS", "NAME_PATTERN", "Action", "ClusterConfig", "ConfigError", "DomainCfg", "EventCfg", "HostCfg",
    "MigrateAction", "MigrationCfg", "Plan", "RunCfg", "TimedEvent", "apply_overrides", "build_plan",
    "check_config", "check_domain_sched", "config_digest", "format_validation_error", "host_spec",
    "json_schema", "load_config", "load_doc", "pool_scheduler", "resolved_doc", "validate_doc",
]
