-- ingress-box: the one schema. Everything durable lives in this file.
-- Applied at every start in one transaction; each statement is idempotent (IF NOT EXISTS).

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Bumped by triggers on every change to `instances`, so that a process can tell whether its
-- in-memory instance cache is current with one cheap read (another process may have changed it).
INSERT OR IGNORE INTO meta (key, value) VALUES ('instances_version', '0');

CREATE TABLE IF NOT EXISTS instances (
    plugin_id              TEXT NOT NULL,
    instance_id            TEXT NOT NULL,
    enabled                INTEGER NOT NULL DEFAULT 1,
    handler                TEXT NOT NULL DEFAULT 'forward',
    target_url             TEXT,
    secret                 TEXT NOT NULL,
    previous_secret        TEXT,
    previous_secret_until  REAL,          -- unix seconds; the old secret verifies until then
    verify_token           TEXT,
    outbound_secret        TEXT NOT NULL, -- whsec_...
    session                TEXT,
    lane_policy            TEXT NOT NULL DEFAULT 'progress'
                           CHECK (lane_policy IN ('progress', 'strict')),
    config                 TEXT NOT NULL DEFAULT '{}',   -- JSON object
    created_at             REAL NOT NULL,
    updated_at             REAL NOT NULL,
    PRIMARY KEY (plugin_id, instance_id)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS instances_version_insert AFTER INSERT ON instances BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'instances_version';
END;
CREATE TRIGGER IF NOT EXISTS instances_version_update AFTER UPDATE ON instances BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'instances_version';
END;
CREATE TRIGGER IF NOT EXISTS instances_version_delete AFTER DELETE ON instances BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'instances_version';
END;

-- One row per accepted webhook. `seq` is the acceptance order; `id` is the stable webhook-id
-- sent to targets (derived from the dedup key, so it is the same on every retry and redrive).
CREATE TABLE IF NOT EXISTS deliveries (
    seq                   INTEGER PRIMARY KEY,
    id                    TEXT NOT NULL UNIQUE,
    plugin_id             TEXT NOT NULL,
    instance_id           TEXT NOT NULL,
    route                 TEXT NOT NULL,
    provider_delivery_id  TEXT NOT NULL,
    conversation          TEXT,
    method                TEXT NOT NULL,
    subpath               TEXT NOT NULL DEFAULT '',   -- the {anything} after the route, with the query
    content_type          TEXT,
    headers               TEXT NOT NULL DEFAULT '{}', -- JSON, credentials redacted
    body                  BLOB,                       -- NULL once pruned after delivery
    state                 TEXT NOT NULL DEFAULT 'pending'
                          CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts              INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,
    note                  TEXT,                       -- e.g. a mapping conflict met on ingress
    received_at           REAL NOT NULL,
    delivered_at          REAL,
    event_type            TEXT,                       -- where the plugin knows one (0.2)
    searchable            INTEGER NOT NULL DEFAULT 0  -- 0 not text, 1 to index, 2 indexed
);

-- The dedup key: INSERT OR IGNORE on this index decides new vs duplicate, atomically.
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_dedup
    ON deliveries (plugin_id, instance_id, provider_delivery_id);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, seq);
CREATE INDEX IF NOT EXISTS deliveries_instance ON deliveries (plugin_id, instance_id, seq);

-- Full-text search over the bodies still kept (release 0.2). External content: the index holds
-- the words, `deliveries.body` the text. `searchable` is 0 for a body that is not UTF-8 text
-- (never indexed), 1 for one waiting for the indexer, which adds it a batch at a time off the
-- accept path (store/search.py), and 2 once indexed; the triggers keep the index in step with
-- the body from then on (retention's prune, a deleted row). FTS5's 'delete' must be given the
-- text as it was indexed, hence the same CAST wherever a body goes in or out.
CREATE INDEX IF NOT EXISTS deliveries_unindexed ON deliveries (seq) WHERE searchable = 1;
CREATE VIRTUAL TABLE IF NOT EXISTS deliveries_search
    USING fts5(body, content='deliveries', content_rowid='seq');
CREATE TRIGGER IF NOT EXISTS deliveries_search_update AFTER UPDATE OF body ON deliveries
WHEN old.searchable = 2 BEGIN
    INSERT INTO deliveries_search (deliveries_search, rowid, body)
    SELECT 'delete', old.seq, CAST(old.body AS TEXT) WHERE old.body IS NOT NULL;
    INSERT INTO deliveries_search (rowid, body)
    SELECT new.seq, CAST(new.body AS TEXT) WHERE new.body IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS deliveries_search_delete AFTER DELETE ON deliveries
WHEN old.searchable = 2 AND old.body IS NOT NULL BEGIN
    INSERT INTO deliveries_search (deliveries_search, rowid, body)
    VALUES ('delete', old.seq, CAST(old.body AS TEXT));
END;

-- Work still to do. A row exists while its delivery is pending (or, in a strict lane, parked
-- dead at the head). `lane` is NULL for events with no conversation; rows of one lane are
-- delivered in `seq` order, the order they were queued in: acceptance order, with a replayed or
-- redriven delivery at the back of its lane (a parked head is un-parked in place).
CREATE TABLE IF NOT EXISTS outbox (
    seq           INTEGER PRIMARY KEY,
    delivery_seq  INTEGER NOT NULL UNIQUE REFERENCES deliveries (seq),
    lane          TEXT,
    available_at  REAL NOT NULL,      -- not before (backoff)
    lease_until   REAL,               -- NULL: not leased; an expired lease is claimable again
    lease_owner   TEXT,
    parked        INTEGER NOT NULL DEFAULT 0   -- 1: dead head of a strict lane, waits for redrive
);
CREATE INDEX IF NOT EXISTS outbox_lane ON outbox (lane, seq);
CREATE INDEX IF NOT EXISTS outbox_available ON outbox (available_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    id            TEXT PRIMARY KEY,            -- dlq_...
    delivery_seq  INTEGER NOT NULL REFERENCES deliveries (seq),
    plugin_id     TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    last_error    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    redriven_at   REAL                          -- NULL while open
);
CREATE INDEX IF NOT EXISTS dead_letters_open
    ON dead_letters (plugin_id, instance_id, created_at) WHERE redriven_at IS NULL;
CREATE INDEX IF NOT EXISTS dead_letters_delivery ON dead_letters (delivery_seq);

-- Each delivery attempt and its answer, for the operator. `attempt` is the attempt's running
-- number for its delivery (1, 2, 3, 4 across a redrive or a replay); `response` is the start of
-- the target's answer (at most 1 KiB, as text), NULL when the handler reported none.
CREATE TABLE IF NOT EXISTS attempts (
    id            INTEGER PRIMARY KEY,
    delivery_seq  INTEGER NOT NULL REFERENCES deliveries (seq),
    attempt       INTEGER NOT NULL,
    started_at    REAL NOT NULL,
    duration_ms   REAL NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead')),
    status_code   INTEGER,
    error         TEXT,
    response      TEXT
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_seq, attempt);

-- External conversation <-> WhatsApp chat. Forward key: (session, chat, plugin, instance);
-- reverse key: (plugin, instance, conversation). Both unique.
CREATE TABLE IF NOT EXISTS conversation_mappings (
    id                        INTEGER PRIMARY KEY,
    session                   TEXT NOT NULL,
    chat                      TEXT NOT NULL,
    plugin_id                 TEXT NOT NULL,
    instance_id               TEXT NOT NULL,
    provider_conversation_id  TEXT NOT NULL,
    state                     TEXT NOT NULL DEFAULT 'bot'
                              CHECK (state IN ('bot', 'human', 'closed')),
    metadata                  TEXT NOT NULL DEFAULT '{}',
    created_at                REAL NOT NULL,
    updated_at                REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversation_mappings_forward
    ON conversation_mappings (session, chat, plugin_id, instance_id);
CREATE UNIQUE INDEX IF NOT EXISTS conversation_mappings_reverse
    ON conversation_mappings (plugin_id, instance_id, provider_conversation_id);

-- A bridge joins one WhatsApp gateway session to one Chatwoot API inbox (release 0.2). Its two
-- instances, `<gateway_kind>/<id>` and `chatwoot/<id>`, hold the webhook secrets; this row holds
-- what the bridge needs to call both APIs (the API key and token are secrets: masked on read).
CREATE TABLE IF NOT EXISTS bridges (
    id                   TEXT PRIMARY KEY,
    gateway_kind         TEXT NOT NULL
                         CHECK (gateway_kind IN ('waha', 'evolution', 'gowa', 'openwa')),
    gateway_url          TEXT NOT NULL,
    gateway_api_key      TEXT NOT NULL DEFAULT '',
    gateway_session      TEXT NOT NULL,
    chatwoot_url         TEXT NOT NULL,
    chatwoot_account_id  INTEGER NOT NULL,
    chatwoot_inbox_id    INTEGER NOT NULL,
    chatwoot_api_token   TEXT NOT NULL,
    options              TEXT NOT NULL DEFAULT '{}',   -- JSON object: the bridge's policies
    created_at           REAL NOT NULL
) WITHOUT ROWID;

-- A bridge's WhatsApp message <-> Chatwoot message links: the dedup table and the echo ledger
-- in one. `inbound` rows are WhatsApp messages the bridge posted to Chatwoot (cw_message_id set
-- once posted); `outbound` rows are parts of an agent's message the bridge sends to WhatsApp,
-- written before the send (wa_id NULL: in flight) and completed with the id the gateway gave.
CREATE TABLE IF NOT EXISTS bridge_messages (
    id                  INTEGER PRIMARY KEY,
    bridge_id           TEXT NOT NULL,
    direction           TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    chat                TEXT NOT NULL,     -- the canonical chat JID
    wa_id               TEXT,              -- the WhatsApp message key id
    cw_message_id       INTEGER,
    part                INTEGER NOT NULL DEFAULT 0,
    cw_conversation_id  INTEGER,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS bridge_messages_wa
    ON bridge_messages (bridge_id, wa_id, part) WHERE wa_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS bridge_messages_cw
    ON bridge_messages (bridge_id, cw_message_id, part) WHERE cw_message_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS bridge_messages_chat ON bridge_messages (bridge_id, chat, created_at);

-- Another JID of a chat (an @lid, or a phone JID seen later) -> the chat's canonical JID, per
-- bridge; filled from every gateway event that carries both.
CREATE TABLE IF NOT EXISTS bridge_aliases (
    bridge_id   TEXT NOT NULL,
    alias       TEXT NOT NULL,
    chat        TEXT NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (bridge_id, alias)
) WITHOUT ROWID;

-- A chat whose contact and conversation an attempt is making now: one attempt per chat, so two
-- lanes of one chat (its phone JID's and its @lid's) never make two conversations. Deleted
-- once the mapping is stored; a row older than an attempt timeout is abandoned (a crash).
CREATE TABLE IF NOT EXISTS bridge_openings (
    bridge_id   TEXT NOT NULL,
    chat        TEXT NOT NULL,
    claimed_at  REAL NOT NULL,
    PRIMARY KEY (bridge_id, chat)
) WITHOUT ROWID;

-- Requests a known instance refused for their signature or timestamp, kept (bounded per
-- instance and in bytes; see store/rejections.py) so they can be admitted once the secret is
-- fixed. Headers are JSON without the credentials that are not the verification input.
CREATE TABLE IF NOT EXISTS rejections (
    id           INTEGER PRIMARY KEY,
    plugin_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    route        TEXT NOT NULL,
    method       TEXT NOT NULL,
    subpath      TEXT NOT NULL,
    url          TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         BLOB NOT NULL,
    received_at  REAL NOT NULL,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0)
);
CREATE INDEX IF NOT EXISTS rejections_instance ON rejections (plugin_id, instance_id, id);
CREATE TRIGGER IF NOT EXISTS rejections_of_deleted_instance AFTER DELETE ON instances BEGIN
    DELETE FROM rejections WHERE plugin_id = OLD.plugin_id AND instance_id = OLD.instance_id;
END;

-- What the attempts taught about each instance's target, kept by the outcome of every attempt
-- in its own transaction (one UPSERT), so an instance's health is one row, not a scan of
-- `attempts`. A failure is an attempt that ended `retry` or `dead`; a success resets the run.
CREATE TABLE IF NOT EXISTS instance_health (
    plugin_id             TEXT NOT NULL,
    instance_id           TEXT NOT NULL,
    last_success_at       REAL,
    last_failure_at       REAL,
    last_dead_at          REAL,              -- an attempt last dead-lettered its delivery
    failing_since         REAL,              -- the first failure since the last success
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    last_error            TEXT,              -- the last failure's, while failing
    last_run_failures     INTEGER NOT NULL DEFAULT 0,  -- the run of failures a success ended
    last_run_ended_at     REAL,              -- and when (so an alert sees a run it missed)
    PRIMARY KEY (plugin_id, instance_id)
) WITHOUT ROWID;

-- The last alert sent about an instance, so that a restart neither repeats one nor misses a
-- recovery; claimed by changing it, so two processes never send the same alert.
CREATE TABLE IF NOT EXISTS instance_alerts (
    plugin_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('failing', 'recovered')),
    changed_at   REAL NOT NULL,
    PRIMARY KEY (plugin_id, instance_id)
) WITHOUT ROWID;

-- A new instance of the same name starts with a clean record.
CREATE TRIGGER IF NOT EXISTS instances_forget_health AFTER DELETE ON instances BEGIN
    DELETE FROM instance_health
    WHERE plugin_id = old.plugin_id AND instance_id = old.instance_id;
    DELETE FROM instance_alerts
    WHERE plugin_id = old.plugin_id AND instance_id = old.instance_id;
END;
