"""Every reason the operator writes, in one place: condition reasons (status.conditions[].reason, also the
reason of the Warning Event posted when Degraded turns to it) and the reasons of the other Events. Stable
CamelCase values: alerts, runbooks and tests match on them."""

from enum import StrEnum


class Reason(StrEnum):
    """Condition reasons, and the problems found while observing that become them."""

    RAY_CLUSTER_NOT_FOUND = "RayClusterNotFound"
    RAY_CLUSTER_UPDATING = "RayClusterUpdating"
    RAY_CLUSTER_REPLICA_FAILURE = "RayClusterReplicaFailure"
    HEAD_POD_NOT_READY = "HeadPodNotReady"
    WORKERS_NOT_READY = "WorkersNotReady"
    RAY_CLUSTER_READY = "RayClusterReady"
    SUSPENDED = "Suspended"
    SCALED_TO_ZERO = "ScaledToZero"
    ENGINE_NOT_LAUNCHED = "EngineNotLaunched"
    ENGINES_NOT_READY = "EnginesNotReady"
    ALL_ENGINES_READY = "AllEnginesReady"
    RESTART_BUDGET_EXHAUSTED = "RestartBudgetExhausted"
    ENGINE_RESTARTING = "EngineRestarting"
    AS_EXPECTED = "AsExpected"
    RECONCILE_COMPLETE = "ReconcileComplete"
    RECOVERING = "Recovering"
    # Problems only the cluster can judge, found while observing.
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    WORKER_UNSCHEDULABLE = "WorkerUnschedulable"
    RAY_DASHBOARD_UNREACHABLE = "RayDashboardUnreachable"
    ENGINE_ADDRESS_NOT_OWN_POD = "EngineAddressNotOwnPod"
    CHILD_REJECTED = "ChildRejected"
    RAY_AUTH_NOT_ENFORCED = "RayAuthNotEnforced"
    # Progressing during a rolling upgrade (upgradeStrategy RollingReplicas), one reason per step.
    ROLLING_SURGE = "RollingSurge"
    ROLLING_DRAIN_OLD = "RollingDrainOld"
    ROLLOUT_WAITING = "RolloutWaiting"
    ROLLOUT_STALLED = "RolloutStalled"
    ROLLOUT_RECREATE = "RolloutRecreate"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # Progressing while the phase is Pending / Provisioning / Launching carries the phase's name.
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    LAUNCHING = "Launching"


class EventReason(StrEnum):
    """Reasons of Events about engines, autoscaling, deletion and the Ray head's token auth (phase changes post
    the phase's name)."""

    ENGINE_SUBMITTED = "EngineSubmitted"
    ENGINE_READY = "EngineReady"
    ENGINE_RESTARTING = "EngineRestarting"
    ENGINE_FAILED = "EngineFailed"
    ENGINE_STOPPED = "EngineStopped"
    ENGINE_DRAINING = "EngineDraining"
    ENGINE_RECREATING = "EngineRecreating"
    ENGINE_REPLACING = "EngineReplacing"
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    DELETING = "Deleting"
    ENGINES_STOPPED = "EnginesStopped"
    ENGINES_NOT_STOPPED = "EnginesNotStopped"
    RAY_AUTH_VERIFIED = "RayAuthVerified"
