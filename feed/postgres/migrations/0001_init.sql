-- Users: version and counters; last_seq is the user's change sequence,
-- advanced under the row lock so that it follows commit order.
CREATE TABLE kronos_users (
    user_id      text PRIMARY KEY,
    version      text NOT NULL,
    task_count   integer NOT NULL DEFAULT 0,
    device_count integer NOT NULL DEFAULT 0,
    last_seq     bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kronos_devices (
    device_id  text PRIMARY KEY,
    user_id    text NOT NULL REFERENCES kronos_users (user_id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kronos_devices_user ON kronos_devices (user_id);

-- Tasks are kept as the client sent them (text, not jsonb, which would
-- reorder keys and rewrite numbers).
CREATE TABLE kronos_tasks (
    user_id text NOT NULL REFERENCES kronos_users (user_id) ON DELETE CASCADE,
    task_id bigint NOT NULL,
    task    text NOT NULL,
    PRIMARY KEY (user_id, task_id)
);

-- The change log: one row per task change, written in the same
-- transaction as the change. Nodes read it by (user_id, user_seq).
CREATE TABLE kronos_changes (
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL,
    user_seq   bigint NOT NULL,
    kind       smallint NOT NULL,
    task_id    bigint NOT NULL,
    task       text,
    device_id  text NOT NULL,
    version    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, user_seq)
);
CREATE INDEX kronos_changes_created ON kronos_changes (created_at);
