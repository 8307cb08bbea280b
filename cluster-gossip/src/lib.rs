//! ringmq-cluster-gossip: node membership (SWIM) and the gossip-disseminated route table that
//! tells each node which peers have subscribers for which filters. Not built yet: owned by the
//! clustering issue. Must not touch sockets of MQTT clients or the per-shard tries.
