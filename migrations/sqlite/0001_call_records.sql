-- One row per ended call. The columns operators filter and sort by are plain, indexed
-- columns; `record` holds the whole CallRecord as JSON (transcript, tool calls, handovers,
-- timeline, token usage), which is what the bridge reads back.
-- Numbers in from_number/to_number are already redacted by the journal.
CREATE TABLE call_records (
    id            TEXT    PRIMARY KEY NOT NULL,
    source        TEXT    NOT NULL,
    call_sid      TEXT,
    stream_sid    TEXT,
    from_number   TEXT,
    to_number     TEXT,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER,
    end_reason    TEXT,
    turns         INTEGER NOT NULL,
    barge_ins     INTEGER NOT NULL,
    sessions      INTEGER NOT NULL,
    tool_calls    INTEGER NOT NULL,
    handovers     INTEGER NOT NULL,
    tokens_total  INTEGER NOT NULL,
    cost_usd      REAL    NOT NULL,
    recording     TEXT,
    record        TEXT    NOT NULL,
    written_at_ms INTEGER NOT NULL
);

CREATE INDEX call_records_started  ON call_records (started_at_ms DESC, id DESC);
CREATE INDEX call_records_call_sid ON call_records (call_sid);
CREATE INDEX call_records_reason   ON call_records (end_reason, started_at_ms);
CREATE INDEX call_records_source   ON call_records (source, started_at_ms);
