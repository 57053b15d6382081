"""Stage 4, the stores' client: idempotent batch writes and consistent reads, one Redis
protocol client per store (redis-py is imported nowhere else).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ResponseError

from serve_app.errors import ConnectFailed, PipelineError, connect_reason, describe
from serve_app.model.backlog import StoreMemory
from serve_app.model.health import READ_TIMEOUT_S, failed, healthy
from serve_app.settings import Settings
from serve_app.store.core import (
    KEYS,
    MAX_TWEETS_PER_SCRIPT,
    CountedTweet,
    Displaced,
    LetterOrigins,
    OutboxLetter,
    PoisonLetter,
    RecordResult,
    merge_results,
)

# One atomic round trip per part of a batch (MAX_TWEETS_PER_SCRIPT tweets, passed as one
# JSON array of [id, fingerprint, country, weather, body, legacy fingerprint]). For each
# tweet not seen before (SET NX with a TTL, the value its marker: content fingerprint,
# country, weather), bump every counter and push it on the capped latest list; the counters
# are summed per field and the list gets only what it keeps, so a part costs one SET per
# tweet plus one HINCRBY per field it touches. An id seen before with the same content (a
# redelivery, a client's retry) changes nothing. With other content it is a conflict, won by
# the smaller fingerprint (keyed: no client can compute it) whatever the order (so both
# stores keep the same tweet): a loser arriving later is refused (never counted); a winner
# arriving later takes the id over, moving the counts from the old content to its own (the
# old tweet is then the loser). Each loser is returned so the consumer can report it, and
# counted once in tweets:conflicts (its own marker, so a redelivered conflict is not counted
# again); with that marker, in the same script, its dead letter goes into the outbox
# (store/core.py), which a retried or redelivered batch cannot write again. Markers of
# older releases hold '1' (same content assumed), a bare fingerprint (no dimensions to move:
# first wins) or the unkeyed fingerprint: the same content is then a duplicate (the legacy
# column), other content never beats it (keyed ones sort above, store/core.py KEYED_MARK).
_PUT_LETTER_LUA = """
local function put_letter(outbox, order, letter_id, entry)
  if redis.call('HSETNX', outbox, letter_id, entry) == 1 then
    local last = redis.call('ZRANGE', order, -1, -1, 'WITHSCORES')
    redis.call('ZADD', order, (tonumber(last[2]) or 0) + 1, letter_id)
  end
end
"""
_RECORD_BATCH_LUA = (
    _PUT_LETTER_LUA
    + """
local ttl = tonumber(ARGV[1])
local latest_len = tonumber(ARGV[2])
local seen_prefix, conflict_prefix = ARGV[3], ARGV[4]
local new, duplicates, refused, displaced, counted_at = 0, 0, {}, {}, {}
local deltas, pushed = {{}, {}, {}}, {}
local function bump(country, weather, delta)
  local fields = {country, weather, country .. ':' .. weather}
  for h = 1, 3 do
    deltas[h][fields[h]] = (deltas[h][fields[h]] or 0) + delta
  end
end
local templates, origin_of = cjson.decode(ARGV[6]), cjson.decode(ARGV[7])
local earlier = cjson.decode(ARGV[8])
local function origin(n)
  local at = origin_of[n + 1]
  return at and templates[at + 1]
end
local function conflict(id, fp, letter)
  if redis.call('SET', conflict_prefix .. id .. ':' .. fp, '1', 'NX', 'EX', ttl) then
    redis.call('INCR', KEYS[6])
    put_letter(KEYS[7], KEYS[8], id .. ':' .. fp, cjson.encode(letter))
  end
end
local rows = cjson.decode(ARGV[5])
for i, tweet in ipairs(rows) do
  local n = i - 1
  local id, fp, country, weather, body = tweet[1], tweet[2], tweet[3], tweet[4], tweet[5]
  local key, marker = seen_prefix .. id, fp .. ':' .. country .. ':' .. weather
  if redis.call('SET', key, marker, 'NX', 'EX', ttl) then
    new = new + 1
    bump(country, weather, 1)
    pushed[#pushed + 1] = body
    counted_at[id] = n
  else
    local seen = redis.call('GET', key)
    local seen_fp = seen and string.sub(seen, 1, 16)
    if seen == false or seen == '1' or seen_fp == fp or seen_fp == tweet[6] then
      duplicates = duplicates + 1
    elseif fp < seen_fp and string.len(seen) > 17 then
      bump(string.sub(seen, 18, 19), string.sub(seen, 21), -1)
      bump(country, weather, 1)
      redis.call('SET', key, marker, 'KEEPTTL')
      pushed[#pushed + 1] = body
      local m = counted_at[id]
      if m then
        refused[#refused + 1] = m
        conflict(id, seen_fp, {o = origin(m), id = id, body = rows[m + 1][5]})
      else
        displaced[#displaced + 1] = {n, id, seen}
        local known = earlier[id .. ':' .. seen_fp]
        if known then
          conflict(id, seen_fp, {o = known[2], id = id, body = known[1]})
        else
          conflict(id, seen_fp, {o = origin(n), id = id, seen = seen, by = fp})
        end
      end
      counted_at[id] = n
    else
      refused[#refused + 1] = n
      conflict(id, fp, {o = origin(n), id = id, body = body})
    end
  end
end
if new > 0 then
  redis.call('INCRBY', KEYS[1], new)
end
for h = 1, 3 do
  for field, delta in pairs(deltas[h]) do
    if delta ~= 0 and redis.call('HINCRBY', KEYS[h + 1], field, delta) == 0 then
      redis.call('HDEL', KEYS[h + 1], field)
    end
  end
end
for first = math.max(1, #pushed - latest_len + 1), #pushed, 1000 do
  redis.call('LPUSH', KEYS[5], unpack(pushed, first, math.min(first + 999, #pushed)))
end
redis.call('LTRIM', KEYS[5], 0, latest_len - 1)
return {new, duplicates, refused, displaced}
"""
)

# Poison letters, put in the outbox before their message is acked, each once however often
# its message is redelivered: written only if its marker (kept like a seen id) is new, or,
# for a message seen for the first time that has no identity a redelivery keeps (RabbitMQ),
# written always and its marker set (so a redelivery of it finds the marker).
# KEYS: outbox, order; ARGV: ttl, marker prefix, then (marker, letter id, entry, always)
# for each letter.
_PUT_POISON_LUA = (
    _PUT_LETTER_LUA
    + """
local ttl, written = tonumber(ARGV[1]), 0
for i = 3, #ARGV, 4 do
  local marker, always = ARGV[2] .. ARGV[i], ARGV[i + 3] == '1'
  if always then
    redis.call('SET', marker, '1', 'EX', ttl)
  end
  if always or redis.call('SET', marker, '1', 'NX', 'EX', ttl) then
    put_letter(KEYS[1], KEYS[2], ARGV[i + 1], ARGV[i + 2])
    written = written + 1
  end
end
return written
"""
)

# The oldest letters of the outbox (ids and entries, not removed); first the letters that
# releases before the outbox parked in a list are moved in (their id: the entry's SHA-1).
# KEYS: outbox, order, the older releases' list; ARGV: how many.
_OUTBOX_HEAD_LUA = (
    _PUT_LETTER_LUA
    + """
local limit = tonumber(ARGV[1])
local legacy = redis.call('LRANGE', KEYS[3], 0, limit - 1)
for _, entry in ipairs(legacy) do
  put_letter(KEYS[1], KEYS[2], 'parked:' .. redis.sha1hex(entry), entry)
end
if #legacy > 0 then
  redis.call('LTRIM', KEYS[3], #legacy, -1)
end
local ids = redis.call('ZRANGE', KEYS[2], 0, limit - 1)
if #ids == 0 then
  return {{}, {}}
end
local entries = redis.call('HMGET', KEYS[1], unpack(ids))
local kept_ids, kept = {}, {}
for i, id in ipairs(ids) do
  if entries[i] then
    kept_ids[#kept_ids + 1] = id
    kept[#kept + 1] = entries[i]
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return {kept_ids, kept}
"""
)

# The outbox's publisher: one consumer per store holds the lease (renewed while it drains),
# so two consumers never publish one letter twice. KEYS: the lease; ARGV: owner, lease ms.
_CLAIM_DRAINER_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""

# Skipped broker records (retention deleted what the consumer had not read): each range is
# counted once, however often it is detected again (a restart before the next commit).
_RECORD_SKIPPED_LUA = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[2], tonumber(ARGV[3]))
  return 1
end
return 0
"""


NO_ORIGINS = LetterOrigins()
"""A batch recorded without its messages (tools, tests): letters carry no origin."""

StoreClient = aioredis.Redis
"""A Redis-protocol client (Redis or Valkey); the type other stages may name."""


class TLSConnection(aioredis.Connection):
    """A connection over TLS on the context ``Settings.tls_context_for`` built (redis-py's
    own SSLConnection would build another one from file names)."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        self.tls_context = tls_context
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "ssl": self.tls_context}


def connect(
    host: str,
    port: int,
    password: str = "",
    *,
    username: str = "",
    tls: ssl.SSLContext | None = None,
    connect_timeout_s: float = 2,
) -> aioredis.Redis:
    """One client per process; redis-py pools and reconnects by itself. ``username`` is an
    ACL user (with ``password``); with ``tls`` every connection is TLS (rediss), and the
    connect timeout bounds the handshake too."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "username": username or None,
        "password": password or None,
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": connect_timeout_s,
        "health_check_interval": 10,
    }
    if tls is None:
        return aioredis.Redis(**options)
    pool = aioredis.ConnectionPool(connection_class=TLSConnection, tls_context=tls, **options)
    return aioredis.Redis.from_pool(pool)


def connect_store(settings: Settings, store: str) -> aioredis.Redis:
    """The client of ``store`` (redis, valkey) as its settings describe it. The connect
    timeout covers the TLS handshake too; a wrong password or ACL user is refused at the
    first command (redis-py logs in on connect)."""
    password: SecretStr = getattr(settings, f"{store}_password")
    plain = not settings.uses_tls(store)
    if settings.sentinels(store):
        return connect_through_sentinels(settings, store)
    return connect(
        getattr(settings, f"{store}_host"),
        getattr(settings, f"{store}_port"),
        password.get_secret_value(),
        username=getattr(settings, f"{store}_username"),
        tls=settings.tls_context_for(store),
        connect_timeout_s=2 if plain else settings.connect_timeout_s,
    )


def connect_through_sentinels(settings: Settings, store: str) -> aioredis.Redis:
    """A client of the primary the Sentinels of ``store`` name: every new connection asks
    them again, so after a failover the client reaches the new primary (a command on a
    connection to the old one fails, and the write is retried)."""
    password = getattr(settings, f"{store}_password").get_secret_value()
    options: dict[str, Any] = {
        "username": getattr(settings, f"{store}_username") or None,
        "password": password or None,
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "health_check_interval": 10,
    }
    sentinels = Sentinel(
        settings.sentinels(store),
        sentinel_kwargs={"socket_timeout": 2, "socket_connect_timeout": 2},
    )
    return sentinels.master_for(getattr(settings, f"{store}_sentinel_master"), **options)


def store_address(settings: Settings, store: str) -> str:
    """Where ``store`` is, without credentials: its Sentinels and primary name, or its URL."""
    if sentinels := settings.sentinels(store):
        listed = ",".join(f"{host}:{port}" for host, port in sentinels)
        return f"sentinel://{listed}/{getattr(settings, f'{store}_sentinel_master')}"
    address = f"{getattr(settings, f'{store}_host')}:{getattr(settings, f'{store}_port')}"
    scheme = "rediss" if settings.uses_tls(store) else "redis"
    return f"{scheme}://{address}"


async def verify_store(settings: Settings, store: str, client: aioredis.Redis) -> None:
    """One PING (the login and TLS handshake first), within ``connect_timeout_s``: a wrong
    password or ACL user, an untrusted certificate or no answer is a :class:`ConnectFailed`
    naming the store and the cause."""
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            await client.ping()
    except Exception as exc:
        reason = connect_reason(exc, settings.connect_timeout_s)
        raise ConnectFailed(store, store_address(settings, store), reason) from exc


def connect_redis(settings: Settings) -> aioredis.Redis:
    return connect_store(settings, "redis")


def connect_valkey(settings: Settings) -> aioredis.Redis:
    return connect_store(settings, "valkey")


class NotDurable(PipelineError):
    """The store did not confirm a write on as many disks and replicas as asked in time:
    the write failed, and the batch is retried (the scripts are idempotent)."""

    def __init__(self, wanted: tuple[int, int], reached: tuple[int, int]) -> None:
        self.wanted = wanted
        self.reached = reached
        super().__init__(wanted, reached)  # both in args: survives pickling

    def __str__(self) -> str:
        (local, replicas), (got_local, got_replicas) = self.wanted, self.reached
        return (
            f"store write not durable in time: on {got_local} of {local} primary AOF and "
            f"{got_replicas} of {replicas} replicas"
        )


WAIT_STEP_MS = 1
"""How long one WAITAOF waits before it is asked again, up to ``store_wait_timeout_ms``: each
new one makes the primary ask its replicas for their offsets at once, while a replica's
answer to an ask may predate its own fsync, and its next report comes a second later (one
long WAITAOF took 1 s where repeated short ones took 1 ms). The server ends a blocked
command's timeout on its next wake-up, every 1/``hz`` s at the latest, so the shortest step
makes the primary's ``hz`` the bound (the replicated stores run ``hz 100``: 10 ms; at the
default 10 every unlucky batch waited 100 ms)."""


class DurableWait:
    """Waits until what a connection wrote is on the primary's disk and on its replicas
    (``WAITAOF numlocal numreplicas timeout``) before a consumer lets its broker go.

    A server without WAITAOF (Redis before 7.2) gets ``WAIT numreplicas``: the replicas
    hold the write in memory, and the primary's own disk is only as safe as its
    ``appendfsync always`` (docs/guarantees.md)."""

    def __init__(self, local: int, replicas: int, timeout_ms: int) -> None:
        self.wanted = (local, replicas)
        self.timeout_ms = timeout_ms
        self.waitaof = True  # False once the server named WAITAOF an unknown command

    @classmethod
    def of(cls, settings: Settings) -> DurableWait:
        return cls(
            settings.store_wait_local, settings.store_wait_replicas, settings.store_wait_timeout_ms
        )

    async def wait(self, connection: Any) -> None:
        """Raise :class:`NotDurable` unless ``connection``'s writes reached the count.

        One write of its own first: a batch whose tweets were all counted before (a
        redelivery after a failed wait, another consumer's batch) writes nothing, and
        WAITAOF only waits for the writes of its own connection. Every write before this
        one is in the same replication stream, so they are covered too."""
        local, replicas = self.wanted
        if not local and not replicas:
            return
        await connection.incr(KEYS.durable_mark)
        reached = (0, 0)
        deadline = time.monotonic() + self.timeout_ms / 1000
        for _ in range(max(1, self.timeout_ms // WAIT_STEP_MS)):
            reached = await self._reached(connection, local, replicas)
            if reached[0] >= local and reached[1] >= replicas:
                return
            if time.monotonic() >= deadline:  # a slow server's steps last longer than asked
                break
        raise NotDurable(self.wanted, reached)

    async def _reached(self, connection: Any, local: int, replicas: int) -> tuple[int, int]:
        if self.waitaof:
            try:
                got = await connection.execute_command("WAITAOF", local, replicas, WAIT_STEP_MS)
                return int(got[0]), int(got[1])
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self.waitaof = False
        got_replicas = await connection.execute_command("WAIT", replicas, WAIT_STEP_MS)
        return local, int(got_replicas)


class TweetStore:
    """Idempotent writes and consistent reads of the counters in one Redis-protocol store."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self._record = client.register_script(_RECORD_BATCH_LUA)
        self._skip = client.register_script(_RECORD_SKIPPED_LUA)
        self._put_poison = client.register_script(_PUT_POISON_LUA)
        self._outbox_head = client.register_script(_OUTBOX_HEAD_LUA)
        self._claim_drainer = client.register_script(_CLAIM_DRAINER_LUA)
        self._ttl = settings.seen_id_ttl_s
        self._latest_len = settings.latest_tweets_length
        # the key of the tweets' fingerprints (consumers check it at start: content_key)
        self.fingerprint_key = settings.fingerprint_key.get_secret_value().encode()
        self.durable = DurableWait.of(settings)

    async def record_batch(
        self, tweets: Sequence[CountedTweet], origins: LetterOrigins = NO_ORIGINS
    ) -> RecordResult:
        """Count every tweet whose id this store has not seen: one atomic script per
        :data:`MAX_TWEETS_PER_SCRIPT` tweets, in order (a batch cut short is redelivered,
        and what was counted counts nothing twice). The losers of id conflicts go into the
        dead-letter outbox in the same scripts, with their message's envelope (``origins``).
        Returns once the writes are durable as the settings ask (:class:`DurableWait`), on
        the one connection that made them."""
        parts = []
        earlier: dict[str, dict[str, int]] = {}  # id -> fingerprint -> first index
        async with self.client.client() as connection:
            for start in range(0, len(tweets), MAX_TWEETS_PER_SCRIPT):
                end = start + MAX_TWEETS_PER_SCRIPT
                letters = part_origins(tweets, origins, start, end, earlier)
                part = await self._record_part(tweets[start:end], letters, connection)
                parts.append((start, part))
                if end < len(tweets):
                    for index in range(start, min(end, len(tweets))):
                        t = tweets[index]
                        earlier.setdefault(t.id, {}).setdefault(t.fingerprint, index)
            await self.durable.wait(connection)
        return merge_results(parts, tweets)

    async def _record_part(
        self,
        tweets: Sequence[CountedTweet],
        letters: tuple[str, str, str],
        connection: aioredis.Redis,
    ) -> RecordResult:
        # the tweets as one JSON argument (the script decodes it with cjson): redis-py packs
        # each argument in Python, which for five per tweet was most of a consumer's time;
        # a CountedTweet is a tuple, i.e. one [id, fingerprint, country, weather, body,
        # legacy] row
        packed = json.dumps(list(tweets), ensure_ascii=False, separators=(",", ":"))
        args = [self._ttl, self._latest_len, KEYS.seen_prefix, KEYS.conflict_prefix, packed,
                *letters]  # fmt: skip
        keys = [KEYS.total, KEYS.by_country, KEYS.by_weather, KEYS.by_country_weather,
                KEYS.latest, KEYS.conflicts, KEYS.dead_letter_outbox,
                KEYS.dead_letter_order]  # fmt: skip
        new, duplicates, refused, displaced = await self._record(
            keys=keys, args=args, client=connection
        )
        return RecordResult(
            int(new),
            int(duplicates),
            tuple(int(i) for i in refused),
            tuple(Displaced.of(int(by), id_, seen) for by, id_, seen in displaced),
        )

    async def put_poison(self, letters: Sequence[PoisonLetter]) -> int:
        """Put poison letters in the outbox, each once (a redelivered message writes
        nothing again, :class:`PoisonLetter`); returns how many were written."""
        if not letters:
            return 0
        args: list[Any] = [self._ttl, KEYS.poison_prefix]
        for letter in letters:
            args += [letter.marker, letter.id, letter.entry, int(letter.always)]
        keys = [KEYS.dead_letter_outbox, KEYS.dead_letter_order]
        return int(await self._put_poison(keys=keys, args=args))

    async def outbox(self, limit: int) -> list[OutboxLetter]:
        """The oldest letters of the outbox (not removed: see :meth:`remove_letters`),
        after moving in what releases before the outbox parked."""
        keys = [KEYS.dead_letter_outbox, KEYS.dead_letter_order, KEYS.parked_dead_letters]
        ids, entries = await self._outbox_head(keys=keys, args=[limit])
        return [OutboxLetter(i, e) for i, e in zip(ids, entries, strict=True)]

    async def remove_letters(self, ids: Sequence[str]) -> int:
        """Drop letters the broker confirmed; returns how many are still unconfirmed."""
        async with self.client.pipeline(transaction=True) as pipe:
            if ids:
                pipe.hdel(KEYS.dead_letter_outbox, *ids)
                pipe.zrem(KEYS.dead_letter_order, *ids)
            pipe.hlen(KEYS.dead_letter_outbox)
            pipe.llen(KEYS.parked_dead_letters)
            results = await pipe.execute()
        return int(results[-2]) + int(results[-1])

    async def claim_drainer(self, owner: str, lease_s: float) -> bool:
        """Take or renew the lease on publishing the outbox; False while another holds it."""
        keys = [KEYS.dead_letter_drainer]
        return bool(await self._claim_drainer(keys=keys, args=[owner, int(lease_s * 1000)]))

    async def record_skipped(self, source: str, first: int, last: int) -> bool:
        """Count the skipped records ``first``..``last`` of ``source`` (a topic partition)
        once; True if the range was new."""
        keys = [KEYS.skipped, KEYS.skipped_ranges]
        args = [f"{source}:{first}-{last}", source, last - first + 1, int(time.time())]
        return bool(await self._skip(keys=keys, args=args))

    async def read_stats(self, latest: int = 0) -> dict[str, Any]:
        """Totals and breakdowns read in one MULTI so they agree with each other."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(KEYS.total)
            pipe.hgetall(KEYS.by_country)
            pipe.hgetall(KEYS.by_weather)
            pipe.hgetall(KEYS.by_country_weather)
            pipe.get(KEYS.conflicts)
            pipe.llen(KEYS.parked_dead_letters)
            pipe.hgetall(KEYS.skipped)
            pipe.hlen(KEYS.dead_letter_outbox)
            if latest:
                pipe.lrange(KEYS.latest, 0, latest - 1)
            results = await pipe.execute()
        stats: dict[str, Any] = {
            "total": int(results[0] or 0),
            "by_country": _ints(results[1]),
            "by_weather": _ints(results[2]),
            "by_country_weather": _ints(results[3]),
            "conflicts": int(results[4] or 0),
            "parked_dead_letters": int(results[5]) + int(results[7]),
            "skipped": _ints(results[6]),
        }
        if latest:
            stats["latest"] = [json.loads(raw) for raw in results[8]]
        return stats

    async def latest_length(self) -> int:
        return int(await self.client.llen(KEYS.latest))


def part_origins(
    tweets: Sequence[CountedTweet],
    origins: LetterOrigins,
    start: int,
    end: int,
    earlier: dict[str, dict[str, int]],
) -> tuple[str, str, str]:
    """The record script's letter arguments for ``tweets[start:end]``: the templates of its
    messages, each tweet's template index, and the tweets of earlier parts (``earlier``: id
    -> fingerprint -> index) with an id of this part, by ``id:fingerprint`` (body,
    template), so a loser an earlier part counted is dead-lettered as it came."""
    of_tweet = origins.of_tweet[start:end]
    if not of_tweet:
        return "[]", "[]", "{}"
    first = of_tweet[0]
    templates = origins.templates[first : of_tweet[-1] + 1]
    known: dict[str, tuple[str, str]] = {}
    for t in tweets[start:end] if earlier else ():
        for fp, index in earlier.get(t.id, {}).items():
            template = origins.templates[origins.of_tweet[index]]
            known.setdefault(f"{t.id}:{fp}", (tweets[index].body, template))
    return (
        json.dumps(templates, separators=(",", ":")),
        json.dumps([i - first for i in of_tweet], separators=(",", ":")),
        json.dumps(known, ensure_ascii=False, separators=(",", ":")),
    )


def both_stores(settings: Settings) -> dict[str, TweetStore]:
    """Redis (fed by Kafka) and Valkey (fed by RabbitMQ), named as ``GET /stats`` names them."""
    return {
        "redis": TweetStore(connect_redis(settings), settings),
        "valkey": TweetStore(connect_valkey(settings), settings),
    }


async def read_side_by_side(
    stores: dict[str, TweetStore], latest: int = 0
) -> tuple[dict[str, Any], bool]:
    """Every store's counts, read at the same time; a store that is down is reported as
    ``{"error": ...}`` and the other is still shown. Returns the stats and whether all
    answered."""

    async def read(tweet_store: TweetStore) -> dict[str, Any]:
        try:
            return await tweet_store.read_stats(latest=latest)
        except Exception as exc:
            return {"error": describe(exc)}

    names = list(stores)
    results = await asyncio.gather(*(read(stores[n]) for n in names))
    return dict(zip(names, results, strict=True)), not any("error" in r for r in results)


def _ints(mapping: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(mapping.items())}


class StoreProbe:
    """PING plus memory and ops/s of one Redis-protocol store, on the store's own client."""

    def __init__(self, client: aioredis.Redis, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def read(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
                memory = await self.client.info("memory")
                stats = await self.client.info("stats")
        except Exception as exc:
            return {"health": failed(exc, self.timeout_s), "used_memory": None, "ops_per_sec": None}
        return {
            "health": healthy(),
            "used_memory": int(memory["used_memory"]),
            "ops_per_sec": int(stats["instantaneous_ops_per_sec"]),
        }


async def read_memory(client: aioredis.Redis, timeout_s: float = READ_TIMEOUT_S) -> StoreMemory:
    """A store's memory use and ``maxmemory`` (``INFO memory``): with ``noeviction``, every
    script fails once the use passes it, so admission control watches the two."""
    async with asyncio.timeout(timeout_s):
        memory = await client.info("memory")
    return StoreMemory(int(memory["used_memory"]), int(memory["maxmemory"]))
