//! ringmq-auth: who may connect, and which topics each client may publish, subscribe and
//! receive.
//!
//! **Owns**: the policy and its file formats. Mosquitto password files ([`PasswordFile`]), JWT
//! verification ([`JwtVerifier`]), CONNECT decisions ([`Authenticator`] → [`Identity`] or
//! [`Refusal`], with the CONNACK codes in [`decision`]), Mosquitto ACL files and the `[acl] deny`
//! list ([`Acl`]: `check_subscribe` / `check_publish` / `check_receive` → [`Access`]), the
//! `[auth]` / `[auth.jwt]` / `[acl]` config sections ([`AuthConfig`], [`JwtConfig`],
//! [`AclConfig`]), and the worker pool that keeps hashing and signature checks off the shard
//! threads ([`AuthPool`]).
//!
//! **Must not touch**: sockets, glommio, the engine, the MQTT codec. Every value is immutable once
//! built; a reload builds a new one and the caller swaps it atomically (keeping the old one when
//! loading fails). Nothing a client or a file controls can panic here, and topic matching loops
//! over levels without recursion.
//!
//! **How the engine uses it**: at start and on SIGHUP, `AuthConfig::load` and `AclConfig::load`
//! build an [`Authenticator`] and an [`Acl`] (keep the old ones if either fails). On CONNECT a
//! shard calls [`Authenticator::is_expensive`]; if false it decides inline, otherwise it calls
//! [`AuthPool::try_submit`] and answers CONNACK "server busy" when the request comes back. The
//! [`AuthReply`] carries an [`Identity`] (close the connection at `expires_at` if set) or a
//! [`Refusal`] (`v5_reason_code` / `v311_return_code`). SUBSCRIBE calls
//! [`Acl::check_subscribe`] with the filter as sent, PUBLISH [`Acl::check_publish`], and each
//! delivery, retained ones included, [`Acl::check_receive`].
//!
//! **Main types**: [`Authenticator`], [`Credentials`], [`Identity`], [`Refusal`],
//! [`FailureReason`], [`Acl`], [`Access`], [`ClaimAcl`], [`AuthPool`], [`AuthRequest`],
//! [`AuthReply`], [`PoolStats`].

pub mod acl;
pub mod authenticator;
pub mod config;
pub mod decision;
pub mod jwt;
pub mod password;
pub mod pool;
pub mod topic;

pub use acl::{Acl, AclError, ClaimAcl};
pub use authenticator::Authenticator;
pub use config::{AclConfig, AuthConfig, ConfigError, JwtConfig, LoadError};
pub use decision::{Access, Credentials, FailureReason, Identity, Refusal};
pub use jwt::{JwtError, JwtVerifier, TokenGrant};
pub use password::{PasswordCheck, PasswordFile, PasswordFileError};
pub use pool::{AuthPool, AuthReply, AuthRequest, PoolError, PoolStats};
