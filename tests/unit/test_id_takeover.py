"""An id conflict cannot be won on purpose, and ids are not handed to strangers.

An attacker reads a victim's id and posts other content with it; the smaller fingerprint
wins the id, so a client that can compute fingerprints grinds descriptions until one wins.
Here the attacker computes everything a client can (the public content, and the unkeyed
function older releases used) and still wins only by chance; a marker an older release
wrote keeps its id; recent ids go only to loopback callers and holders of the cluster's
token (no server: fakes for the stores and the token check).
"""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from devstack import config, serve_ops
from serve_app.dashboard.core import DashboardCore, build_dashboard_app
from serve_app.errors import ConfigError
from serve_app.ingest.rest import build_rest_app
from serve_app.model.exposure import IDS_HIDDEN
from serve_app.model.schema import Tweet
from serve_app.settings import MIN_FINGERPRINT_KEY_CHARS, Settings
from serve_app.store.core import CountedTweet, fingerprint, legacy_fingerprint, wins
from tests.support.dashboard_fakes import FakeClock, FakeMonitor, fake_replicas
from tests.support.dashboard_fakes import FakeStore as FakeStatsStore
from tests.support.fakes import make_ingest

KEY = b"the consumers' key, 32 bytes min"
ATTACKS = 64
GRIND_TRIES = 256
MAX_GRIND = 100_000
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def tweet(tweet_id: str, description: str, country: str = "GT") -> Tweet:
    return Tweet(id=tweet_id, description=description, country=country, weather="Lluvioso",
                 accepted_at=NOW)  # fmt: skip


def unkeyed(t: Tweet) -> str:
    """What a client can compute of a tweet: the old, unkeyed fingerprint of its content."""
    content = "\x1f".join((t.description, t.country, t.weather)).encode("utf-8")
    return hashlib.blake2b(content, digest_size=8).hexdigest()


def ground_attack(victim: Tweet) -> Tweet:
    """The attacker's best effort: the victim's id, and the description with the smallest
    fingerprint a client can compute, of at least GRIND_TRIES tries and below the victim's
    (it "wins" by every function a client knows)."""
    best = None
    for i in range(MAX_GRIND):
        candidate = tweet(victim.id, f"takeover {victim.id} #{i}", "SV")
        if best is None or unkeyed(candidate) < unkeyed(best):
            best = candidate
        if i + 1 >= GRIND_TRIES and unkeyed(best) < unkeyed(victim):
            return best
    raise AssertionError(f"no description below {victim.id}'s in {MAX_GRIND} tries")


def store_keeps(counted: CountedTweet, newcomer: CountedTweet) -> CountedTweet:
    """The store script's rule for one id counted before and a newcomer with other content."""
    return newcomer if wins(newcomer.fingerprint, counted.fingerprint) else counted


def test_a_ground_id_conflict_wins_only_by_chance() -> None:
    victims = [tweet(f"victim-{n}", f"llueve en la zona {n}") for n in range(ATTACKS)]
    won = 0
    for victim in victims:
        attack = ground_attack(victim)
        counted, newcomer = CountedTweet.of(victim, KEY), CountedTweet.of(attack, KEY)
        kept = store_keeps(counted, newcomer)
        # the winner follows the keyed fingerprints alone, whatever the grinding did
        assert (kept is newcomer) == (
            fingerprint(KEY, attack.description, attack.country, attack.weather)
            < fingerprint(KEY, victim.description, victim.country, victim.weather)
        )
        won += kept is newcomer
    # a fair coin per attack: about half, never the 64 of 64 grinding won before
    assert 16 <= won <= 48, f"{won} of {ATTACKS} ground attacks took the id"


def test_grinding_does_not_move_the_odds() -> None:
    """Ground attackers win as often as attackers that took the first description."""
    victims = [tweet(f"victim-{n}", f"nublado {n}") for n in range(ATTACKS)]
    ground = sum(
        wins(
            CountedTweet.of(ground_attack(v), KEY).fingerprint, CountedTweet.of(v, KEY).fingerprint
        )
        for v in victims
    )
    naive = sum(
        wins(
            CountedTweet.of(tweet(v.id, f"takeover {v.id} #0", "SV"), KEY).fingerprint,
            CountedTweet.of(v, KEY).fingerprint,
        )
        for v in victims
    )
    assert abs(ground - naive) <= 16


def test_the_fingerprint_depends_on_the_key() -> None:
    content = ("Está lloviendo", "GT", "Lluvioso")
    one, other = fingerprint(KEY, *content), fingerprint(KEY[::-1], *content)
    assert one != other and len(one) == len(other) == 16
    assert one != legacy_fingerprint(*content)
    assert fingerprint(KEY, *content) == one  # deterministic: both stores agree


def test_a_redelivery_of_a_tweet_an_older_release_counted_matches_its_marker() -> None:
    """Markers older releases wrote hold the unkeyed fingerprint: the row the consumer sends
    carries it too, so the script sees the same content (a duplicate, not a conflict)."""
    old = tweet("t-1", "Está lloviendo")
    row = CountedTweet.of(old, KEY)
    marker_of_an_older_release = f"{unkeyed(old)}:GT:Lluvioso"
    assert row.legacy == marker_of_an_older_release[:16]
    assert row.fingerprint != row.legacy


def test_other_content_never_takes_an_id_from_a_marker_of_an_older_release() -> None:
    """Against an unkeyed marker the incumbent keeps the id in both stores, whatever the
    newcomer: the same decision whatever order or store (so the two stores agree)."""
    for n in range(200):
        counted = tweet(f"t-{n}", f"antes {n}")
        newcomer = CountedTweet.of(tweet(f"t-{n}", f"después {n}", "SV"), KEY)
        assert not wins(newcomer.fingerprint, unkeyed(counted))


def test_consumers_refuse_to_start_without_a_key() -> None:
    with pytest.raises(ConfigError, match="fingerprint_key"):
        Settings().content_key()
    with pytest.raises(ConfigError, match="at least 32"):
        Settings(fingerprint_key="short").content_key()
    settings = Settings(fingerprint_key=KEY.decode())
    assert settings.content_key() == KEY
    assert KEY.decode() not in repr(settings) and KEY.decode() not in settings.fingerprint()


# --- who sees recent ids -------------------------------------------------------------------

STRANGER = ("203.0.113.7", 50123)
LOOPBACK = ("127.0.0.1", 50123)
TOKEN = "Bearer the-cluster-token"


def right_token(authorization: str) -> bool:
    return authorization == TOKEN


async def _stats(latest: int) -> tuple[dict[str, Any], bool]:
    tweets = [{"id": f"t-{i}", "description": "sol", "country": "GT"} for i in range(latest)]
    return {"redis": {"total": 2, "latest": tweets}, "valkey": {"error": "down"}}, False


def stats_for(client: tuple[str, int], headers: dict[str, str] | None = None, check=right_token):
    ingest, _, _ = make_ingest()
    app = build_rest_app(ingest, ingest.publish, _stats, ids_check=check)
    return TestClient(app, client=client).get("/stats?latest=2", headers=headers).json()


def test_a_stranger_gets_the_counts_and_the_latest_tweets_without_ids() -> None:
    body = stats_for(STRANGER)
    redis = body["redis"]
    assert redis["total"] == 2 and len(redis["latest"]) == 2
    assert all("id" not in t and t["description"] == "sol" for t in redis["latest"])
    assert redis["latest_ids"] == IDS_HIDDEN  # said, not silently dropped
    assert body["valkey"] == {"error": "down"}


@pytest.mark.parametrize(
    ("client", "headers", "check", "shown"),
    [
        (STRANGER, {"Authorization": TOKEN}, right_token, True),
        (STRANGER, {"Authorization": "Bearer a-guess"}, right_token, False),
        (STRANGER, {"Authorization": TOKEN}, None, False),  # no token auth: nobody proves it
        (LOOPBACK, None, right_token, True),
        (LOOPBACK, None, None, True),
        (LOOPBACK, {"X-Forwarded-For": "198.51.100.1"}, right_token, False),  # a local proxy
        (LOOPBACK, {"Forwarded": "for=198.51.100.1", "Authorization": TOKEN}, right_token, True),
    ],
)
def test_ids_go_to_loopback_callers_and_to_holders_of_the_token(client, headers, check, shown):
    redis = stats_for(client, headers, check)["redis"]
    assert [t.get("id") for t in redis["latest"]] == (["t-0", "t-1"] if shown else [None] * 2)
    assert ("latest_ids" in redis) is not shown


def test_the_dashboard_snapshot_hides_ids_from_strangers_too() -> None:
    stores = {name: FakeStatsStore() for name in ("redis", "valkey")}
    stores["redis"].record([{"id": "t-9", "description": "sol", "country": "GT",
                             "weather": "Soleado", "accepted_at": NOW.isoformat()}])  # fmt: skip
    core = DashboardCore(stores, FakeMonitor(list(stores)), fake_replicas,
                         weathers=("Soleado",), clock=FakeClock())  # fmt: skip
    app = build_dashboard_app(core, sample_in_background=False, ids_check=right_token)
    with TestClient(app, client=STRANGER) as stranger:
        hidden = stranger.get("/api/snapshot").json()["stores"]["redis"]
        shown = stranger.get("/api/snapshot", headers={"Authorization": TOKEN}).json()
    assert [t.get("id") for t in hidden["latest"]] == [None] and hidden["latest_ids"] == IDS_HIDDEN
    assert hidden["total"] == 1 and hidden["latest"][0]["description"] == "sol"
    assert [t["id"] for t in shown["stores"]["redis"]["latest"]] == ["t-9"]


# --- the local stack's key -----------------------------------------------------------------


def test_the_local_stack_makes_one_private_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(config.stack_config, "dir", str(tmp_path))
    monkeypatch.delenv("FINGERPRINT_KEY", raising=False)
    key = config.local_fingerprint_key()
    assert len(key) >= MIN_FINGERPRINT_KEY_CHARS and config.local_fingerprint_key() == key
    assert stat.S_IMODE((tmp_path / "secrets" / "fingerprint-key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert config.local_secrets() == {"fingerprint_key": key}
    monkeypatch.setenv("FINGERPRINT_KEY", "given")
    assert config.local_secrets() == {}  # the environment's key wins


def test_only_the_deployed_consumers_get_the_key_and_no_tracked_file_holds_it() -> None:
    key = config.app_settings().fingerprint_key.get_secret_value()
    deployed = serve_ops.local_config()["applications"]
    assert [a["name"] for a in deployed if key in str(a.get("args"))] == ["consumers"]
    assert key not in config.SERVE_CONFIG.read_text() and key not in config.RAY_ENV.read_text()


def test_serve_never_logs_the_consumers_arguments() -> None:
    """Serve logs an application's ``args`` at INFO when it imports it; the local stack's key
    is one of them, so Serve's log level stays above INFO."""
    logging_config = yaml.safe_load(config.SERVE_CONFIG.read_text())["logging_config"]
    assert logging_config["log_level"] in ("WARNING", "ERROR", "CRITICAL")
