//! ringmq-uring: the per-shard io_uring data plane (being built).
