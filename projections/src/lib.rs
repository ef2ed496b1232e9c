//! The read models (issue #4): one consumer group per projector applying events exactly once
//! per `(room_id, seq)` into MongoDB, Redis and ClickHouse. Nothing is implemented here yet.
