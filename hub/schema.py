"""The hub's database schema as numbered migrations, written once for both SQLite and PostgreSQL."""

from __future__ import annotations

__all__ = ["ENGINE_STATEMENTS", "MIGRATIONS", "QUARANTINE_STORED", "engine_statements", "migration_statements"]

# Each migration is applied once, in order, inside the migration lock; never edit one that
# has shipped, add the next number instead.  {blob} and {id} are filled per engine.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE secrets (
            kind TEXT NOT NULL,
            hash {blob} NOT NULL,
            expires_ms BIGINT NOT NULL,
            PRIMARY KEY (kind, hash)
        );
        CREATE TABLE tokens (
            id {id},
            hash {blob} NOT NULL UNIQUE,
            uses_left INTEGER NOT NULL,
            expires_ms BIGINT NOT NULL,
            approve BOOLEAN NOT NULL,
            fleet TEXT NOT NULL,
            note TEXT NOT NULL,
            created_ms BIGINT NOT NULL
        );
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            key_id {blob} NOT NULL UNIQUE,
            public_key {blob} NOT NULL,
            status TEXT NOT NULL,
            fleet TEXT NOT NULL,
            enrolled_ms BIGINT NOT NULL,
            token_id BIGINT,
            last_seen_ms BIGINT,
            software_version TEXT NOT NULL DEFAULT '',
            boot_epoch BIGINT,
            last_seq BIGINT,
            unclean_stops BIGINT NOT NULL DEFAULT 0,
            readings_dropped BIGINT NOT NULL DEFAULT 0,
            spool_batches BIGINT,
            spool_bytes BIGINT,
            policy_digest TEXT NOT NULL DEFAULT '',
            config_digest TEXT NOT NULL DEFAULT '',
            applied_etag TEXT NOT NULL DEFAULT '',
            errors TEXT NOT NULL DEFAULT '[]',
            counters TEXT NOT NULL DEFAULT '{{}}',
            readings_stored BIGINT NOT NULL DEFAULT 0,
            batches_stored BIGINT NOT NULL DEFAULT 0,
            duplicates BIGINT NOT NULL DEFAULT 0,
            status_ms BIGINT,
            site TEXT NOT NULL DEFAULT '',
            latitude DOUBLE PRECISION,
            longitude DOUBLE PRECISION
        );
        CREATE TABLE revoked_keys (
            key_id {blob} PRIMARY KEY,
            device_id TEXT NOT NULL,
            revoked_ms BIGINT NOT NULL
        );
        CREATE TABLE batches (
            key_id {blob} NOT NULL,
            boot_epoch BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            device_id TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            received_ms BIGINT NOT NULL,
            readings INTEGER NOT NULL,
            size INTEGER NOT NULL,
            policy_digest TEXT NOT NULL,
            codec TEXT NOT NULL,
            counters TEXT NOT NULL,
            PRIMARY KEY (key_id, boot_epoch, seq)
        );
        CREATE TABLE channels (
            id {id},
            device_id TEXT NOT NULL,
            name TEXT NOT NULL,
            unit TEXT NOT NULL,
            kind TEXT NOT NULL,
            resolution DOUBLE PRECISION,
            description TEXT NOT NULL,
            UNIQUE (device_id, name)
        );
        CREATE TABLE chunks (
            id {id},
            channel_id BIGINT NOT NULL,
            first_ms BIGINT NOT NULL,
            last_ms BIGINT NOT NULL,
            count INTEGER NOT NULL,
            data {blob} NOT NULL
        );
        CREATE INDEX chunks_by_channel_first ON chunks (channel_id, first_ms);
        CREATE INDEX chunks_by_channel_last ON chunks (channel_id, last_ms);
        CREATE TABLE notices (
            id {id},
            device_id TEXT NOT NULL,
            received_ms BIGINT NOT NULL,
            notice TEXT NOT NULL
        );
        CREATE TABLE desired (
            scope TEXT NOT NULL,
            name TEXT NOT NULL,
            document TEXT NOT NULL,
            updated_ms BIGINT NOT NULL,
            PRIMARY KEY (scope, name)
        );
        """,
    ),
    (
        2,
        # Exports across every channel in time order walk this index instead of sorting all chunks.
        """
        CREATE INDEX chunks_by_first ON chunks (first_ms, id);
        """,
    ),
    (
        3,
        # A channel a batch flagged personal (OXP kind + 4) is never published; the flag is
        # sticky (store_batch only ever sets it), so existing channels start as not personal.
        """
        ALTER TABLE channels ADD COLUMN personal BOOLEAN NOT NULL DEFAULT FALSE;
        """,
    ),
    (
        4,
        # Batch identities and device counters are OXP uints (up to 2^64 - 1), past a signed
        # 64-bit BIGINT/INTEGER: from here on these columns hold the value minus 2^63, exact and
        # in the same order on both engines (hub/engines/sql.py: to_uint_column, from_uint_column).
        # A later migration's uint column follows the same rule, and an INSERT sets such a column
        # explicitly (its DEFAULT 0 would read as 2^63).
        # Readings outside the bounds of OXP §8.5 are kept apart in quarantine with the reason;
        # the reading is CBOR [ts_ms, value, quality], exact whatever it holds.  After these
        # statements each store moves the stored readings outside the bounds out of their chunks
        # (QUARANTINE_STORED below); those rows have no batch identity, which chunks do not record.
        """
        UPDATE batches SET boot_epoch = boot_epoch + {uint_shift}, seq = seq + {uint_shift}, created_ms = created_ms + {uint_shift};
        UPDATE devices SET boot_epoch = boot_epoch + {uint_shift}, last_seq = last_seq + {uint_shift},
            unclean_stops = unclean_stops + {uint_shift}, readings_dropped = readings_dropped + {uint_shift},
            spool_batches = spool_batches + {uint_shift}, spool_bytes = spool_bytes + {uint_shift};
        CREATE TABLE quarantine (
            id {id},
            device_id TEXT NOT NULL,
            key_id {blob},
            boot_epoch BIGINT,
            seq BIGINT,
            channel TEXT NOT NULL,
            unit TEXT NOT NULL,
            reading {blob} NOT NULL,
            reason TEXT NOT NULL,
            received_ms BIGINT NOT NULL
        );
        CREATE INDEX quarantine_by_device ON quarantine (device_id, reason);
        """,
    ),
    (
        5,
        # The freshness (OXP §7.2) of the last status report or notice accepted from each device key:
        # one not newer is a replay.  boot_epoch and report_seq are uints held as migration 4 says;
        # NULL where the sender sent none (gateway software from before freshness).
        """
        CREATE TABLE report_marks (
            key_id {blob} PRIMARY KEY,
            device_id TEXT NOT NULL,
            boot_epoch BIGINT,
            report_seq BIGINT,
            updated_ms BIGINT NOT NULL
        );
        """,
    ),
    (
        6,
        # People (hub/accounts.py): an account's roles as a comma-separated set and its API token as
        # SHA-256 (NULL: none issued, e.g. after it was disabled).  Sessions and login links remember
        # whose they are; those made before this migration belong to the built-in "admin" account of
        # the admin token.  The audit log (hub/audit.py) takes INSERT only: each engine adds a trigger
        # refusing UPDATE and DELETE (ENGINE_STATEMENTS below), and the store has no call that edits it.
        """
        CREATE TABLE accounts (
            name TEXT PRIMARY KEY,
            roles TEXT NOT NULL,
            token_hash {blob} UNIQUE,
            disabled BOOLEAN NOT NULL DEFAULT FALSE,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL
        );
        ALTER TABLE secrets ADD COLUMN account TEXT NOT NULL DEFAULT 'admin';
        CREATE TABLE audit (
            id {id},
            at_ms BIGINT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            before_sha256 TEXT NOT NULL,
            after_sha256 TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        """,
    ),
    (
        8,
        # The northbound export (hub/export.py).  export_outbox holds one row per stored chunk still to be
        # published to the city's broker; it is written in the transaction that stores the batch, while an
        # export lease was held within OUTBOX_GRACE_MS (hub/engines/sql.py), and a row is deleted only once
        # the broker acknowledged every message made of it.  export_lease names the one hub process that
        # publishes (the others wait for it to lapse).  Number 7 is kept for another change.
        """
        CREATE TABLE export_outbox (
            id {id},
            chunk_id BIGINT NOT NULL
        );
        CREATE TABLE export_lease (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires_ms BIGINT NOT NULL
        );
        """,
    ),
    (
        9,
        # Staged software rollouts (hub/rollout.py, docs/updates.md).  A rollout targets one registered release
        # at one fleet; its stages are a JSON list of percentages of the fleet's devices (a device is in a stage
        # by a stable hash of its id, so the list is the whole plan), ``stage`` the index reached and
        # ``stage_started_ms`` when; ``state`` is running, halted or done, ``reason`` why it halted.  Failures
        # count from ``since_ms`` (its start or resume); ``pause_backlog`` (0: never) is the spool backlog, in
        # batches, above which a gateway holds its download back.  Each device's target itself is a row of ``desired`` with
        # scope 'software', so it travels in the signed desired document and its ETag like config and policy.
        # software_updates keeps the newest software_update outcome each device reported (OXP §7), with when
        # it last changed (a device repeats it in every status report).
        """
        CREATE TABLE rollouts (
            id {id},
            version TEXT NOT NULL,
            fleet TEXT NOT NULL,
            stages TEXT NOT NULL,
            wait_ms BIGINT NOT NULL,
            max_failure DOUBLE PRECISION NOT NULL,
            url TEXT NOT NULL,
            key_id TEXT NOT NULL,
            state TEXT NOT NULL,
            stage INTEGER NOT NULL,
            stage_started_ms BIGINT NOT NULL,
            since_ms BIGINT NOT NULL,
            pause_backlog BIGINT NOT NULL,
            reason TEXT NOT NULL,
            created_ms BIGINT NOT NULL,
            updated_ms BIGINT NOT NULL
        );
        CREATE INDEX rollouts_by_fleet ON rollouts (fleet, state);
        CREATE TABLE software_updates (
            device_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            version TEXT NOT NULL,
            reason TEXT NOT NULL,
            running TEXT NOT NULL,
            changed_ms BIGINT NOT NULL
        );
        """,
    ),
    (
        10,
        # Named rings for staged rollouts (hub/rollout.py, docs/updates.md): the ring a device belongs to, set by an
        # operator (`ocn-edge hub device ring`, the admin API); '' for none.  A rollout's stages may name rings in order.
        """
        ALTER TABLE devices ADD COLUMN ring TEXT NOT NULL DEFAULT '';
        """,
    ),
    (
        11,
        # A device's notices of the last 24 hours, counted before each new one is stored (Store.add_notice's daily limit,
        # docs/threat-model.md H26); and a device's newest notice (the register, retention), which the first alone would
        # find by sorting all of that device's notices.
        """
        CREATE INDEX notices_by_device_time ON notices (device_id, received_ms);
        CREATE INDEX notices_by_device ON notices (device_id, id);
        """,
    ),
)

# Statements of a migration one engine needs in its own dialect, each run whole (trigger bodies hold
# semicolons, so they cannot go through migration_statements' split).  Applied after the migration's
# shared statements, in the same transaction.
_APPEND_ONLY = "the audit log is append-only: entries are never changed or deleted"
ENGINE_STATEMENTS: dict[int, dict[str, tuple[str, ...]]] = {
    6: {
        "sqlite": (
            f"CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
            f"CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END",
        ),
        "postgresql": (
            "CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
            "CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
        ),
    },
}

# After this migration's statements each store quarantines the readings already stored outside the
# bounds (hub/chunks.py split_chunk): that takes decoding chunks, which SQL cannot do.
QUARANTINE_STORED = 4

# -2^63 as both engines read it (the literal 9223372036854775808 is past BIGINT).
_UINT_SHIFT = "(-9223372036854775807 - 1)"
_ENGINE = {
    "sqlite": {"blob": "BLOB", "id": "INTEGER PRIMARY KEY", "uint_shift": _UINT_SHIFT},
    "postgresql": {"blob": "BYTEA", "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "uint_shift": _UINT_SHIFT},
}


def migration_statements(engine: str, sql: str) -> list[str]:
    """One migration's statements for an engine ("sqlite" or "postgresql")."""
    text = sql.format(**_ENGINE[engine])
    return [s.strip() for s in text.split(";") if s.strip()]


def engine_statements(engine: str, version: int) -> tuple[str, ...]:
    """The statements migration ``version`` runs on ``engine`` alone, after its shared ones (often none)."""
    return ENGINE_STATEMENTS.get(version, {}).get(engine, ())
