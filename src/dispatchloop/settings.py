"""Configuration: one `Settings` object, built once in `main()` and passed down.

Sources, highest priority first: explicit arguments, environment variables
(`DISPATCHLOOP_*`, nested with `__`), an optional TOML file (`--config` or
`DISPATCHLOOP_CONFIG`), defaults. No module reads the environment at import;
`load_settings` is the only entry point, and it turns every validation failure
into a `ConfigError` whose message is one sentence naming the bad setting, so
the CLI can exit with code 2.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from dispatchloop.errors import InputError

ENV_PREFIX = "DISPATCHLOOP_"
CONFIG_FILE_ENV = "DISPATCHLOOP_CONFIG"

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


class ConfigError(InputError):
    """A configuration problem, described in one sentence for the operator (exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(_Section):
    """Where events come from and where dead letters and model events go."""

    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        description="Comma-separated host:port list of brokers.",
    )
    topic: str = Field("dispatch.outcomes", min_length=1)
    dlq_topic: str = Field("dispatch.outcomes.dlq", min_length=1)
    models_topic: str = Field("dispatch.models", min_length=1)
    group_id: str = Field("dispatchloop", min_length=1)
    client_id: str = Field("dispatchloop", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts; earliest so nothing is skipped."
    )
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=100_000)
    max_poll_records: int = Field(2_000, ge=1, le=100_000)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("bootstrap_servers", mode="before")
    @classmethod
    def _split_bootstrap(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, servers: list[str]) -> list[str]:
        if not servers:
            raise ValueError("must list at least one host:port")
        for server in servers:
            match = _HOST_PORT.match(server)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"{server!r} is not a host:port pair")
        return servers

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        uses_sasl = self.security_protocol.startswith("SASL")
        if uses_sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if uses_sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username and sasl_password"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a readable file")
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by every kafka-python client (consumer, producer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None  # checked by _check_security
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol.endswith("SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            if self.ssl_cafile is not None:
                options["ssl_cafile"] = str(self.ssl_cafile)
            if self.ssl_certfile is not None:
                options["ssl_certfile"] = str(self.ssl_certfile)
            if self.ssl_keyfile is not None:
                options["ssl_keyfile"] = str(self.ssl_keyfile)
            if self.ssl_key_password is not None:
                options["ssl_password"] = self.ssl_key_password.get_secret_value()
        return options


class MetricsSettings(_Section):
    """The HTTP endpoint with /metrics, /healthz and /readyz."""

    enabled: bool = True
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port (tests).")


class IngestSettings(_Section):
    """The consume → validate → store → commit loop."""

    max_event_bytes: int = Field(65_536, ge=1_024, description="Larger records are dead letters.")
    poll_timeout_ms: int = Field(500, ge=10, le=60_000)
    reconnect_backoff_initial_s: float = Field(0.5, gt=0)
    reconnect_backoff_max_s: float = Field(30.0, gt=0)
    dlq_send_timeout_s: float = Field(30.0, gt=0)
    dlq_max_record_bytes: int = Field(
        1_000_000,
        ge=4_096,
        le=1_048_576,
        description="A dead letter bigger than this (key, value, headers) is sent truncated.",
    )
    dlq_truncated_prefix_bytes: int = Field(
        65_536, ge=256, description="Bytes of an oversized record a truncated dead letter keeps."
    )
    readiness_timeout_s: float = Field(
        20.0,
        gt=0,
        description="/readyz turns 503 after this long without a poll or without broker contact.",
    )

    @model_validator(mode="after")
    def _check_prefix(self) -> IngestSettings:
        if self.dlq_truncated_prefix_bytes >= self.dlq_max_record_bytes // 2:
            raise ValueError("dlq_truncated_prefix_bytes must be below dlq_max_record_bytes / 2")
        return self


class RetentionSettings(_Section):
    """How long the replay store keeps events; None keeps everything."""

    max_age_days: float | None = Field(None, gt=0)
    max_events: int | None = Field(None, gt=0)
    interval_s: float = Field(3_600.0, gt=0)


class RewardSettings(_Section):
    """Weights of the one reward function shared by simulator, logged events and serving.

    reward = -(empty_km_weight * empty_km
               + delay_weight_per_min * priority_weight[priority] * max(pickup_delay_min, 0))
             - late_penalty * [status == late] - cancel_penalty * [status == cancelled]
    """

    empty_km_weight: float = Field(1.0, ge=0)
    delay_weight_per_min: float = Field(0.5, ge=0)
    priority_weights: tuple[float, float, float] = (1.0, 2.0, 4.0)
    late_penalty: float = Field(5.0, ge=0)
    cancel_penalty: float = Field(20.0, ge=0)

    @field_validator("priority_weights")
    @classmethod
    def _check_priority_weights(cls, weights: tuple[float, float, float]) -> tuple[float, ...]:
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError("priority weights must be finite and non-negative")
        return weights


class RegistrySettings(_Section):
    """The model registry: where version files live and how promotion events are published."""

    root: Path | None = Field(None, description="Version directories; default <data_dir>/registry.")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="How long `models promote` tries to publish before queueing."
    )
    ack_timeout_s: float = Field(
        10.0, gt=0, description="How long one send waits for the broker's acknowledgement."
    )
    backoff_initial_s: float = Field(0.2, gt=0)
    backoff_max_s: float = Field(5.0, gt=0)


class ServingSettings(_Section):
    """`dispatchloop serve` and `simulate --follow`: the decision sidecar and its dispatcher."""

    host: str = Field("127.0.0.1", min_length=1, description="Loopback: the sidecar's caller.")
    port: int = Field(8470, ge=0, le=65535, description="0 picks a free port (tests).")
    epsilon: float = Field(
        0.0, ge=0.0, lt=1.0, description="Chance of a uniformly random eligible driver."
    )
    follow: bool = Field(True, description="Follow dispatch.models (else: registry at start only).")


class GateSettings(_Section):
    """Thresholds of the promotion gate (evaluation/gate.py): what a candidate must show.

    The paired simulator test and the guardrails compare candidate minus champion on
    the same TEST episodes; the off-policy gates use the logged events. Every margin is
    in the unit of its figure (reward per episode, a rate, minutes, km per episode).
    """

    confidence: float = Field(0.99, gt=0.5, lt=1.0)
    """Simultaneous confidence of the paired intervals over all looks (two-sided)."""
    reward_margin: float = Field(0.0, ge=0.0)
    """The candidate's paired lower bound on mean reward per episode must exceed this."""
    looks: int = Field(5, ge=1, le=10)
    """Interim analyses of the sequential design (equally spaced in episodes)."""
    max_episodes: int = Field(2_000, ge=20, le=200_000)
    """Paired TEST episodes at the last look."""
    late_rate_margin: float = Field(0.005, ge=0.0)
    """Largest tolerated rise of the late rate (share of bookings)."""
    cancel_rate_margin: float = Field(0.005, ge=0.0)
    """Largest tolerated rise of the cancellation rate (share of bookings)."""
    pickup_delay_margin_min: float = Field(0.5, ge=0.0)
    """Largest tolerated rise of the mean pickup delay, in minutes."""
    empty_km_margin: float = Field(2.0, ge=0.0)
    """Largest tolerated rise of empty kilometres per episode."""
    ope_min_ess: float = Field(200.0, ge=1.0)
    """Below this Kish effective sample size the off-policy gates are undecided."""
    ope_max_top_share: float = Field(0.5, gt=0.0, le=1.0)
    """Above this share of the weight in the top 1 % of decisions they are undecided."""
    ope_max_unsupported: float = Field(0.05, ge=0.0, le=1.0)
    """Above this share of the target's probability on never-logged actions: undecided."""
    ope_bootstrap: int = Field(2_000, ge=100, le=100_000)
    """Bootstrap resamples (whole episodes) of the off-policy intervals."""


class LoopSettings(_Section):
    """The `run` loop: what to train, with what budgets, and when.

    The single source of the loop's defaults: the CLI and the daemon read these,
    no module keeps its own constant for them.
    """

    trainer: Literal["dqn", "distill"] = Field(
        "dqn", description="dqn: offline on the store then fine-tuned in the fitted simulator."
    )
    offline_steps: int = Field(2_000, ge=0, description="Gradient steps on stored transitions.")
    sim_steps: int = Field(12_000, ge=0, description="Simulator steps of (fine-)tuning training.")
    distill_episodes: int = Field(200, ge=1, description="TRAIN episodes per DAgger round.")
    train_timeout_s: float = Field(1_800.0, gt=0, description="Training child's time budget.")
    judge_timeout_s: float = Field(900.0, gt=0, description="The gate's child's time budget.")
    tune_trials: int = Field(20, ge=1, description="Trials per re-tuning run.")
    tune_steps_per_trial: int = Field(8_000, ge=100)
    tune_timeout_s: float = Field(3_600.0, gt=0, description="Tuning child's time budget.")
    tune_interval_s: float = Field(
        7 * 24 * 3_600.0, gt=0, description="Re-tune at most this often (warm-started)."
    )
    interval_s: float = Field(6 * 3_600.0, gt=0, description="Retrain at least this often.")
    new_events: int = Field(50_000, ge=1, description="Retrain after this many new events.")
    drift_metric: Literal["psi"] = "psi"
    drift_threshold: float = Field(
        0.2, gt=0, description="PSI above which a distribution has drifted (0.2: a major shift)."
    )
    drift_window_s: float = Field(
        24 * 3_600.0, gt=0, description="The recent window compared with the last training one."
    )
    check_interval_s: float = Field(
        30.0, gt=0, description="How often the scheduler evaluates its triggers."
    )
    drift_check_interval_s: float = Field(
        600.0, gt=0, description="How often the drift scores are computed (reads two windows)."
    )
    drift_sample: int = Field(20_000, ge=200, description="Events sampled per drift window.")
    publish_interval_s: float = Field(
        5.0, gt=0, description="How often the leader relays the outbox to dispatch.models."
    )
    min_events: int = Field(
        3_000, ge=1, description="A cycle on fewer stored events is skipped with a reason."
    )
    train_window_s: float | None = Field(
        None, gt=0, description="Train on the last this-many seconds; None: everything stored."
    )
    stop_grace_s: float = Field(
        10.0, gt=0, description="After SIGTERM, the child's grace before SIGKILL."
    )
    leader_check_interval_s: float = Field(
        5.0, gt=0, description="Leader lock: liveness check and takeover attempt period."
    )
    canary_share: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="A promoted candidate first serves this share of decisions as `challenger` "
        "(canary) while the champion serves the rest; 0: promote straight to champion.",
    )
    canary_duration_s: float = Field(
        24 * 3_600.0,
        gt=0,
        description="A canary still undecided after this long ends with insufficient_evidence "
        "(the challenger's share goes to 0).",
    )
    canary_check_interval_s: float = Field(
        300.0, gt=0, description="How often the leader judges a running canary's outcomes."
    )
    canary_confidence: float = Field(
        0.99,
        gt=0.5,
        lt=1.0,
        description="Simultaneous confidence of the canary's reward, late-rate and cancel-rate "
        "intervals over every look (an anytime-valid confidence sequence).",
    )
    canary_min_decisions: int = Field(
        500, ge=20, description="Decisions per arm before a canary verdict."
    )
    canary_late_margin: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Largest tolerated rise of the challenger's late rate (share of bookings).",
    )
    canary_cancel_margin: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Largest tolerated rise of the challenger's cancellation rate.",
    )
    canary_planned_decisions: int = Field(
        20_000,
        ge=100,
        description="Decisions (both arms) at which the canary's intervals are tightest; "
        "about the decisions a canary sees in half its duration.",
    )
    seed: int = 0


class ShadowSettings(_Section):
    """Live shadow scoring in `run`: champion and challenger on the last logged decisions."""

    enabled: bool = Field(True, description="Score the registry's models on incoming events.")
    window: int = Field(
        2_000, ge=10, description="Decisions per model in the sliding window (by count)."
    )
    interval_s: float = Field(5.0, gt=0, description="How often new stored events are scored.")
    batch: int = Field(2_000, ge=1, description="At most this many events scored per tick.")
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="Level of the shadow intervals.")
    min_ess: float = Field(
        30.0, ge=2.0, description="Below this ESS no SNIPS estimate is reported (only the ESS)."
    )


class Settings(BaseSettings):
    """Everything dispatchloop can be told. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    data_dir: Path = Field(
        Path("dispatchloop-data"), description="State: replay DB, models, studies."
    )
    store_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/replay.db."
    )
    log_format: Literal["auto", "text", "json"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)

    loop: LoopSettings = Field(default_factory=LoopSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not re.match(
            r"^(sqlite|postgresql(\+\w+)?)://", url.get_secret_value()
        ):
            raise ValueError("must start with sqlite:// or postgresql+psycopg://")
        return url

    @property
    def resolved_store_url(self) -> str:
        """The store URL with the SQLite default under data_dir filled in."""
        if self.store_url is not None:
            return self.store_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'replay.db').resolve()}"

    @property
    def resolved_registry_root(self) -> Path:
        """The registry root with the default under data_dir filled in."""
        return (self.registry.root or self.data_dir / "registry").resolve()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings passes the TOML file's contents as init values: the environment
        # must win over the file, key by key, so env comes first.
        return (env_settings, init_settings)


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the one Settings object, or raise ConfigError with one clear sentence."""
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = Path(os.environ[CONFIG_FILE_ENV])
    unknown = sorted(key for key in os.environ if _is_unknown_env_key(key))
    if unknown:
        raise ConfigError(f"Unknown setting {unknown[0]} (check the name and the __ nesting).")
    file_values = _read_toml(config_file) if config_file is not None else {}
    try:
        return Settings(**file_values)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {str(path)!r}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {exc}.") from None


def _is_unknown_env_key(key: str) -> bool:
    if not key.startswith(ENV_PREFIX) or key.startswith(f"{ENV_PREFIX}TEST_"):
        return False
    path = key[len(ENV_PREFIX) :].lower().split("__")
    if path == ["config"]:
        return False
    model: type[BaseModel] = Settings
    for depth, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return True
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return depth != len(path) - 1
    return False


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence naming the first bad setting in environment-variable form."""
    error = exc.errors()[0]
    location = "__".join(str(part) for part in error["loc"]).upper()
    setting = f"{ENV_PREFIX}{location}" if location else "configuration"
    message = error["msg"].removeprefix("Value error, ")
    return f"Invalid setting {setting}: {message}."


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON-able data, with every secret masked."""
    data = settings.model_dump(mode="json")
    data["store_url"] = settings_store_url_masked(settings)
    return data


def settings_store_url_masked(settings: Settings) -> str:
    """The store URL with any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", settings.resolved_store_url)
