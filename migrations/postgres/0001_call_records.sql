-- One row per ended call. The columns operators filter and sort by are plain, indexed
-- columns; `record` holds the whole CallRecord as JSONB (transcript, tool calls, handovers,
-- timeline, token usage), which is what the bridge reads back.
-- Numbers in from_number/to_number are already redacted by the journal.
CREATE TABLE call_records (
    id            TEXT             PRIMARY KEY,
    source        TEXT             NOT NULL,
    call_sid      TEXT,
    stream_sid    TEXT,
    from_number   TEXT,
    to_number     TEXT,
    started_at_ms BIGINT           NOT NULL,
    ended_at_ms   BIGINT,
    end_reason    TEXT,
    turns         BIGINT           NOT NULL,
    barge_ins     BIGINT           NOT NULL,
    sessions      BIGINT           NOT NULL,
    tool_calls    BIGINT           NOT NULL,
    handovers     BIGINT           NOT NULL,
    tokens_total  BIGINT           NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    recording     TEXT,
    record        JSONB            NOT NULL,
    written_at_ms BIGINT           NOT NULL
);

CREATE INDEX call_records_started  ON call_records (started_at_ms DESC, id DESC);
CREATE INDEX call_records_call_sid ON call_records (call_sid);
CREATE INDEX call_records_reason   ON call_records (end_reason, started_at_ms);
CREATE INDEX call_records_source   ON call_records (source, started_at_ms);
