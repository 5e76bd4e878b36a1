//! Just enough S3 for Berth: AWS Signature Version 4 for a request, and one signed request over
//! plain HTTP/1.1 (the health check of an `s3` service). Hand-written on the `hmac` and `sha2`
//! Berth already uses, instead of an SDK with a large dependency tree.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Credentials and region of one S3 endpoint.
#[derive(Clone)]
pub struct S3Key {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

impl std::fmt::Debug for S3Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Key")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of an empty body, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters (and `/` in paths),
/// as SigV4 requires.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The headers that sign a request: `x-amz-date`, `x-amz-content-sha256` and `authorization`.
/// `path` is the decoded path (`/bucket/key`), `query` the decoded pairs, `host` what the
/// `Host` header will carry, `payload_sha256` the body's hash (hex).
pub fn sign(
    key: &S3Key,
    method: &str,
    host: &str,
    path: &str,
    query: &[(&str, &str)],
    payload_sha256: &str,
    now: OffsetDateTime,
) -> Vec<(&'static str, String)> {
    let amz_date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let date = &amz_date[..8];
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers =
        format!("host:{host}\nx-amz-content-sha256:{payload_sha256}\nx-amz-date:{amz_date}\n");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}",
        uri_encode(path, true)
    );
    let scope = format!("{date}/{}/s3/aws4_request", key.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac(format!("AWS4{}", key.secret_access_key).as_bytes(), date);
    let k_region = hmac(&k_date, &key.region);
    let k_service = hmac(&k_region, "s3");
    let k_signing = hmac(&k_service, "aws4_request");
    let signature = hex(&hmac(&k_signing, &string_to_sign));
    vec![
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", payload_sha256.to_owned()),
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                key.access_key_id
            ),
        ),
    ]
}

/// One signed request without a body to `127.0.0.1:port`; answers the HTTP status and the body.
pub async fn request(
    port: u16,
    key: &S3Key,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let host = format!("127.0.0.1:{port}");
    let headers = sign(
        key,
        method,
        &host,
        path,
        query,
        EMPTY_SHA256,
        OffsetDateTime::now_utc(),
    );
    let mut target = uri_encode(path, true);
    if !query.is_empty() {
        target.push('?');
        target.push_str(
            &query
                .iter()
                .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
                .collect::<Vec<_>>()
                .join("&"),
        );
    }
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-length: 0\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header layout; whether the signature is right is proven against a real S3 server
    /// (Garage) by the `s3` provider's end-to-end test, which fails on any signing mistake.
    #[test]
    fn the_signed_headers_have_the_sigv4_layout() {
        let key = S3Key {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        };
        let now = time::macros::datetime!(2013-05-24 00:00:00 UTC);
        let h = sign(
            &key,
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/",
            &[("lifecycle", "")],
            EMPTY_SHA256,
            now,
        );
        assert_eq!(h[0], ("x-amz-date", "20130524T000000Z".to_owned()));
        assert!(h[2]
            .1
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="));
        assert_eq!(h[2].1.rsplit('=').next().unwrap().len(), 64);
    }

    #[test]
    fn paths_and_queries_are_encoded_as_sigv4_wants() {
        assert_eq!(uri_encode("/b/a key+x", true), "/b/a%20key%2Bx");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
    }
}
