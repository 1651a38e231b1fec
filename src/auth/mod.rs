//! Authentication, in one room: who is calling, and what proves it.
//!
//! - API keys (`Authorization: Bearer icak_…`, or the password of Basic auth): [`api_keys`],
//!   checked against the identities kept by [`crate::identity`].
//! - Microsoft Entra ID access tokens: [`entra`] (keys from the tenant's OpenID configuration).
//! - Standard Webhooks signatures over the raw body: [`webhooks`] (headers, tolerance, replay
//!   cache); the HMAC itself is [`crate::domain::standard_webhooks`], shared with the signer of
//!   outgoing control-plane requests.
//! - Which methods each route group accepts (`ICAHUB_AUTH_METHODS`):
//!   [`crate::config::auth_methods`], a setting; the roles each group needs are there too.
//! - The result, a [`Caller`]: a name and its roles ([`crate::domain::identity`]).
//!
//! The HTTP filter that applies all of this to a request is [`crate::http::auth`].

pub mod api_keys;
pub mod entra;
pub mod webhooks;

pub use crate::domain::identity::Caller;
