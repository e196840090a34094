"""Secrets in the settings (Redis password, Kafka SASL/SSL passwords) never show when rendered."""

from __future__ import annotations

import logging

import pytest

from engage.config import Settings, redact_url

SECRETS = ("redis-pw-0x51", "sasl-pw-0x52", "keypass-0x53", "oauth-0x54", "query-pw-0x55")


def secret_settings() -> Settings:
    """Settings carrying every kind of secret the engine accepts."""
    return Settings.load({
        "redis_url": f"rediss://engage:{SECRETS[0]}@redis.internal:6380/0",
        "kafka_config": (f"security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,"
                         f"sasl.username=engage,sasl.password={SECRETS[1]},"
                         f"ssl.key.password={SECRETS[2]},"
                         f"sasl.oauthbearer.client.secret={SECRETS[3]}"),
    }, {})


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into: {text[:300]}"


def test_every_rendering_of_settings_masks_secrets(caplog: pytest.LogCaptureFixture) -> None:
    settings = secret_settings()
    # What an operator would see: repr, str, f-strings, the start-up log line.
    assert_clean(repr(settings))
    assert_clean(str(settings))
    assert_clean(f"{settings} {settings!r}")
    assert_clean(repr(settings.redacted()))
    with caplog.at_level(logging.INFO):
        logging.getLogger("engage").info("starting engine with %s", settings.redacted())
        logging.getLogger("engage").info("settings %s", settings)
    assert_clean(caplog.text)
    # ...while what is not secret stays readable, and the values themselves are intact.
    shown = settings.redacted()
    assert shown["redis_url"] == "rediss://engage:***@redis.internal:6380/0"
    assert shown["kafka_config"]["sasl.username"] == "engage"
    assert shown["kafka_config"]["security.protocol"] == "SASL_SSL"
    assert shown["kafka_config"]["sasl.password"] == "***"
    assert settings.kafka_config["sasl.password"] == SECRETS[1]
    assert settings.redis_url is not None and SECRETS[0] in settings.redis_url


def test_settings_errors_never_echo_a_secret() -> None:
    # A password holding ',' splits into an item that is not key=value: the
    # error must name the problem, not print the password's tail.
    with pytest.raises(ValueError) as err:
        Settings.load({"kafka_config": f"sasl.username=u,sasl.password=ab,{SECRETS[1]}"}, {})
    assert "kafka_config" in str(err.value)
    assert_clean(str(err.value))
    # Any other bad setting is reported by name, with the secrets configured beside it.
    with pytest.raises(ValueError) as err:
        Settings.load({"redis_url": f"redis://:{SECRETS[0]}@r:6379/0",
                       "kafka_config": f"sasl.password={SECRETS[1]}", "lateness": "soon"}, {})
    assert str(err.value).startswith("setting lateness:")
    assert_clean(str(err.value))


@pytest.mark.parametrize("url,shown", [
    (f"redis://:{SECRETS[0]}@cache:6379/0", "redis://:***@cache:6379/0"),
    (f"redis://{SECRETS[0]}@cache:6379/0", "redis://:***@cache:6379/0"),        # password only
    (f"rediss://default:a/b@{SECRETS[0]}@cache:6380/1", "rediss://default:***@cache:6380/1"),
    (f"redis://cache:6379/0?password={SECRETS[4]}&socket_timeout=5",
     "redis://cache:6379/0?password=***&socket_timeout=5"),
    (f"redis://:a?{SECRETS[0]}@cache:6379/0", "redis://***"),
    ("redis://cache:6379/0", "redis://cache:6379/0"),
])
def test_redis_urls_are_masked(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert_clean(redact_url(url))
