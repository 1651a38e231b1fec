//! Turning a Table Storage connection string into a client: endpoint and credentials, HTTP
//! timeouts and retries sized for the callers' ~10 s budget, and the mapping from `azure_core`
//! errors to [`StoreError`]. Nothing here logs or returns the account key or SAS token.

use crate::storage::StoreError;
use azure_core::error::ErrorKind;
use azure_core::{FixedRetryOptions, RetryOptions, StatusCode, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::TableServiceClient;
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};
use std::sync::Arc;
use std::time::Duration;

/// Keys a connection string may carry (others are reported by name, never by value).
const KNOWN_KEYS: &[&str] = &[
    "AccountName",
    "AccountKey",
    "SharedAccessSignature",
    "EndpointSuffix",
    "DefaultEndpointsProtocol",
    "UseDevelopmentStorage",
    "DevelopmentStorageProxyUri",
    "BlobEndpoint",
    "BlobSecondaryEndpoint",
    "TableEndpoint",
    "TableSecondaryEndpoint",
    "QueueEndpoint",
    "QueueSecondaryEndpoint",
    "FileEndpoint",
    "FileSecondaryEndpoint",
];

const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_TABLE_PORT: u16 = 10002;

/// Where the tables live and how to authenticate: the parsed connection string.
pub(crate) struct Endpoint {
    /// The table service URL, without credentials (safe to show).
    pub url: String,
    pub account: String,
    pub credentials: StorageCredentials,
}

fn config(msg: impl Into<String>) -> StoreError {
    StoreError::Config(format!("Table Storage connection string: {}", msg.into()))
}

/// Parse `UseDevelopmentStorage=true[;DevelopmentStorageProxyUri=..]`, account name + key or SAS
/// with `EndpointSuffix`/`DefaultEndpointsProtocol`, or an explicit `TableEndpoint`.
pub(crate) fn parse(connection_string: &str) -> Result<Endpoint, StoreError> {
    // Pre-check the shape ourselves: `ConnectionString::new` puts the whole string (key
    // included) into its error messages, so its errors must never be shown.
    let mut seen = Vec::new();
    for pair in connection_string
        .split(';')
        .filter(|p| !p.trim().is_empty())
    {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(config("expected `Key=Value` pairs separated by `;`"));
        };
        let k = k.trim();
        if !KNOWN_KEYS.contains(&k) {
            return Err(config(format!("unknown key `{k}`")));
        }
        if v.trim().is_empty() {
            return Err(config(format!("`{k}` has no value")));
        }
        seen.push(k);
    }
    if seen.is_empty() {
        return Err(config("it is empty"));
    }
    let cs = ConnectionString::new(connection_string).map_err(|_| {
        config("invalid value for `DefaultEndpointsProtocol` or `UseDevelopmentStorage`")
    })?;

    if cs.use_development_storage == Some(true) {
        let base = match cs.development_storage_proxy_uri {
            Some(proxy) => {
                let url = url_of(proxy, "DevelopmentStorageProxyUri")?;
                let host = url
                    .host_str()
                    .ok_or_else(|| config("`DevelopmentStorageProxyUri` has no host"))?;
                format!("{}://{host}", url.scheme())
            }
            None => "http://127.0.0.1".to_string(),
        };
        return Ok(Endpoint {
            url: format!("{base}:{EMULATOR_TABLE_PORT}/{EMULATOR_ACCOUNT}"),
            account: EMULATOR_ACCOUNT.to_string(),
            credentials: StorageCredentials::emulator(),
        });
    }

    let (url, account) = match (cs.table_endpoint, cs.account_name) {
        (Some(endpoint), account) => {
            let url = url_of(endpoint, "TableEndpoint")?;
            let account = match account {
                Some(a) => a.to_string(),
                // With a SAS and no account name the name only labels the location.
                None => url
                    .host_str()
                    .and_then(|h| h.split('.').next())
                    .unwrap_or("account")
                    .to_string(),
            };
            (endpoint.trim().trim_end_matches('/').to_string(), account)
        }
        (None, Some(account)) => {
            let protocol = cs
                .default_endpoints_protocol
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "https".to_string());
            let suffix = cs.endpoint_suffix.unwrap_or("core.windows.net");
            (
                format!("{protocol}://{account}.table.{suffix}"),
                account.to_string(),
            )
        }
        (None, None) => {
            return Err(config(
                "needs `AccountName` (with `AccountKey` or `SharedAccessSignature`), a \
                 `TableEndpoint`, or `UseDevelopmentStorage=true`",
            ))
        }
    };
    let credentials = match (cs.sas, cs.account_key) {
        (Some(sas), _) => StorageCredentials::sas_token(sas)
            .map_err(|_| config("`SharedAccessSignature` is not a valid SAS token"))?,
        (None, Some(key)) => {
            if azure_core::base64::decode(key).is_err() {
                return Err(config("`AccountKey` is not valid base64"));
            }
            if cs.account_name.is_none() {
                return Err(config("`AccountKey` needs `AccountName`"));
            }
            StorageCredentials::access_key(account.clone(), key.to_string())
        }
        (None, None) => {
            return Err(config(
                "needs `AccountKey` or `SharedAccessSignature` to authenticate",
            ))
        }
    };
    Ok(Endpoint {
        url,
        account,
        credentials,
    })
}

/// The endpoint of a table service reached with tokens (`ICAHUB_TABLES_ENDPOINT`): an http(s)
/// URL without a query; the account name is its first host label.
pub(crate) fn token_endpoint(
    url: &str,
    credential: Arc<dyn azure_core::auth::TokenCredential>,
) -> Result<Endpoint, StoreError> {
    let parsed = azure_core::Url::parse(url.trim())
        .map_err(|_| StoreError::Config("ICAHUB_TABLES_ENDPOINT is not a URL".into()))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
        return Err(StoreError::Config(
            "ICAHUB_TABLES_ENDPOINT must be an http(s) URL without a query, e.g. \
             https://<account>.table.core.windows.net"
                .into(),
        ));
    }
    let host = parsed.host_str().unwrap_or_default();
    // Azurite and other path-style endpoints carry the account as the first path segment.
    let account = match parsed
        .path_segments()
        .and_then(|mut p| p.next())
        .filter(|s| !s.is_empty())
    {
        Some(first) if host.parse::<std::net::IpAddr>().is_ok() || host == "localhost" => {
            first.to_string()
        }
        _ => host.split('.').next().unwrap_or("account").to_string(),
    };
    Ok(Endpoint {
        url: url.trim().trim_end_matches('/').to_string(),
        account,
        credentials: StorageCredentials::token_credential(credential),
    })
}

fn url_of(s: &str, key: &str) -> Result<azure_core::Url, StoreError> {
    let url =
        azure_core::Url::parse(s.trim()).map_err(|_| config(format!("`{key}` is not a URL")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(config(format!("`{key}` must be an http(s) URL")));
    }
    if url.query().is_some() {
        return Err(config(format!(
            "`{key}` must not carry a query (put a SAS in `SharedAccessSignature`)"
        )));
    }
    Ok(url)
}

/// Per-request timeout. Each ingest makes two to four round trips per attempt, so a stalled
/// connection must fail fast enough to leave room for a retry within the caller's budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn client(endpoint: &Endpoint) -> Result<TableServiceClient, StoreError> {
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the HTTP client: {e}")))?;
    // azure_core retries 408/429/5xx and I/O errors; keep it to two quick retries
    // (200-455 ms apart) so that a broken service surfaces as 503 well within ~10 s.
    let retry = RetryOptions::fixed(
        FixedRetryOptions::default()
            .delay(Duration::from_millis(200))
            .max_retries(2u32)
            .max_total_elapsed(Duration::from_secs(3)),
    );
    let location = CloudLocation::Custom {
        account: endpoint.account.clone(),
        uri: endpoint.url.clone(),
    };
    Ok(
        TableServiceClientBuilder::with_location(location, endpoint.credentials.clone())
            .transport(TransportOptions::new(Arc::new(http)))
            .retry(retry)
            .build(),
    )
}

/// An HTTP status from an error, if the service answered.
pub(crate) fn status_of(e: &azure_core::Error) -> Option<StatusCode> {
    match e.kind() {
        ErrorKind::HttpResponse { status, .. } => Some(*status),
        _ => None,
    }
}

/// Map an `azure_core` error to a store error. 404/409/412 are handled by the callers that
/// expect them; anything reaching here is a failure. Messages are passed through [`redact`]:
/// transport errors quote the request URL, which carries the SAS token when one is used.
pub(crate) fn map_err(what: &str, e: azure_core::Error) -> StoreError {
    match e.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let code = error_code.as_deref().unwrap_or("-");
            let msg = format!(
                "{what}: Table Storage answered {} ({code})",
                u16::from(*status)
            );
            match u16::from(*status) {
                401 | 403 => StoreError::Unavailable(format!("{msg}; check the credentials")),
                _ => StoreError::Unavailable(msg),
            }
        }
        ErrorKind::DataConversion => StoreError::Corrupt(redact(&format!("{what}: {e}"))),
        ErrorKind::Credential => {
            // The policy wraps the credential's own error: show the whole chain.
            let mut msg = format!("{what}: credentials: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            StoreError::Config(redact(&msg))
        }
        _ => StoreError::Unavailable(redact(&format!("{what}: {e}"))),
    }
}

/// Replace the value of every `sig=` query parameter with `REDACTED`.
pub(crate) fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        rest = &rest[i + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn sas_signatures_are_redacted() {
        assert_eq!(
            redact("error sending request for url (https://a/t?sv=1&sig=abc%2B==&se=2) x"),
            "error sending request for url (https://a/t?sv=1&sig=REDACTED&se=2) x"
        );
        assert_eq!(redact("sig=zz"), "sig=REDACTED");
    }

    #[test]
    fn development_storage() {
        let e = parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(e.url, "http://127.0.0.1:10002/devstoreaccount1");
        let e =
            parse("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://azurite").unwrap();
        assert_eq!(e.url, "http://azurite:10002/devstoreaccount1");
    }

    #[test]
    fn account_and_explicit_endpoint() {
        let e = parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(e.url, "https://acct.table.core.windows.net");
        let e = parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};TableEndpoint=http://127.0.0.1:1234/devstoreaccount1/;"
        ))
        .unwrap();
        assert_eq!(e.url, "http://127.0.0.1:1234/devstoreaccount1");
        let e = parse(
            "TableEndpoint=https://acct.table.core.windows.net/;SharedAccessSignature=sv=2022-11-02&ss=t&sig=abc%3D",
        )
        .unwrap();
        assert_eq!(e.account, "acct");
    }

    #[test]
    fn bad_strings_never_echo_the_key() {
        for bad in [
            "".to_string(),
            "garbage".to_string(),
            format!("AccountName=a;AccountKey={KEY};Bogus=1"),
            "AccountName=a".to_string(),
            format!("AccountKey={KEY}"),
            format!("AccountName=a;AccountKey={KEY};TableEndpoint=ftp://x"),
            "AccountName=a;AccountKey=not base64!".to_string(),
            format!("DefaultEndpointsProtocol=gopher;AccountName=a;AccountKey={KEY}"),
        ] {
            let Err(StoreError::Config(msg)) = parse(&bad) else {
                panic!("accepted {bad:?}")
            };
            assert!(!msg.contains(KEY), "{msg}");
        }
    }
}
