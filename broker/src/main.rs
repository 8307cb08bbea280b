//! `ringmq`: the broker binary. Wires configuration, shards, listeners and signals together.
mod limits;

fn main() {}
