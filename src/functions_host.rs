//! The only Azure Functions-specific code: how the host talks to a custom handler.
//!
//! HTTP-only functions are forwarded unchanged (host.json `enableForwardingHttpRequest` /
//! `enableProxyingHttpRequest`), so the handler sees the public path (`/api/...`), the raw body and
//! the original headers, plus the host's own headers below. Timer functions arrive as a JSON
//! envelope `{"Data": {...}, "Metadata": {...}}` on `POST /<FunctionName>` (PROTOCOLS.md 1.3).

/// Set by the host for the child process: the port to listen on (not the public port).
pub const PORT_VAR: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
/// Added by the host to every forwarded request; logged with each request.
pub const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";
