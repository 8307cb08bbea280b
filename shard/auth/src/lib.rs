//! ringmq-auth: authentication and authorization policy (being built).
