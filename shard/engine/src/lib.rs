//! ringmq-engine: the I/O-free MQTT engine (being built).
