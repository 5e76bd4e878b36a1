//! An S3 bucket as a backup destination: the few calls backups need (put, multipart upload,
//! head, get, list, delete), signed with SigV4 (`berth_engines::s3::sign`), over path-style
//! URLs so any S3-compatible server works (Garage, MinIO, Ceph, AWS), over HTTP or HTTPS (rustls,
//! the system's roots plus an optional `caCertificate`).
//!
//! Every upload is checked on the way in and read back: a single PUT carries `Content-MD5`
//! (the server refuses a body that does not match) and is then asked for its size and ETag
//! (`HEAD`); a multipart upload compares each part's ETag (the server's MD5 of what it
//! stored) with the MD5 computed here, and the completed object's size with the bytes sent.

use base64::Engine as _;
use berth_engines::s3::{sign, uri_encode, S3Key};
use berth_types::JsonMap;
use md5::{Digest, Md5};
use serde_json::Value;
use time::OffsetDateTime;

use crate::{BackupError, Result};

/// Payloads are not hashed into the signature (S3's `UNSIGNED-PAYLOAD`): their integrity is
/// checked with `Content-MD5` and the ETags instead, so large bodies are hashed once, not twice.
const UNSIGNED: &str = "UNSIGNED-PAYLOAD";

/// One object's size and MD5 (hex), as uploaded and as read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The MD5 (hex) of a single upload; of a multipart one, S3's multipart ETag
    /// ([`multipart_etag`]) over parts of `part_size`.
    pub md5: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    /// CRC-32 (IEEE) of the whole object, computed here from the bytes the store then checked
    /// against their MD5. A restore checks this one: the same assurance against corruption on
    /// the way back, at a small fraction of MD5's CPU (several GB/s with CLMUL, where MD5 runs
    /// at ~400 MB/s here), which a 2-core restore feels. `None` in manifests of Berth before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

/// Where a service's backups go: the contract's backup `config` (`endpointUrl`,
/// `destinationPath` = `s3://bucket/prefix/`, `accessKey`, optional `region` and
/// `caCertificate`) and `secrets` (`secretKey`).
#[derive(Clone)]
pub struct Bucket {
    http: reqwest::Client,
    /// `http(s)://host[:port]`, no trailing slash.
    endpoint: String,
    host: String,
    bucket: String,
    /// Ends with `/` unless empty.
    prefix: String,
    key: S3Key,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn setting<'a>(map: &'a JsonMap, name: &str, field: &str) -> Result<&'a str> {
    match map.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(BackupError::Settings(format!(
            "{field}.{name}: must be a non-empty string"
        ))),
        None => Err(BackupError::Settings(format!(
            "{field}.{name}: is required"
        ))),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text of every `<tag>...</tag>` in an S3 XML answer, unescaped.
fn xml_all(body: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_one(body: &str, tag: &str) -> Option<String> {
    xml_all(body, tag).into_iter().next()
}

/// An answer's ETag without its quotes (the MD5 of a single object or part, in hex).
fn etag_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

/// S3's error answer in one line: `403 InvalidAccessKeyId: ...`.
fn s3_error(status: reqwest::StatusCode, body: &str) -> String {
    match (xml_one(body, "Code"), xml_one(body, "Message")) {
        (Some(code), Some(msg)) => format!("{} {code}: {msg}", status.as_u16()),
        (Some(code), None) => format!("{} {code}", status.as_u16()),
        _ => format!(
            "{} {}",
            status.as_u16(),
            body.trim().chars().take(200).collect::<String>()
        ),
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(600))
}

/// The client of every store that needs no CA of its own. Shared, so the system's root
/// certificates (`/etc/ssl/certs`) are read once per process and connections are pooled across
/// backups and the WAL archiver.
fn shared_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            client_builder()
                .build()
                .expect("an HTTP client with the system's roots builds")
        })
        .clone()
}

/// A client that also trusts `pem` (one or more CA certificates): a store behind a private CA,
/// the usual case for a self-hosted MinIO or Garage behind a TLS proxy.
fn client_trusting(pem: &str) -> Result<reqwest::Client> {
    let bad = |why: String| BackupError::Settings(format!("backups.config.caCertificate: {why}"));
    let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    certs
        .into_iter()
        .fold(client_builder(), |b, c| b.add_root_certificate(c))
        .build()
        .map_err(|e| bad(format!("unusable ({e})")))
}

impl Bucket {
    /// Reads and checks the settings; says which field is wrong and why.
    pub fn from_settings(config: &JsonMap, secrets: &JsonMap) -> Result<Self> {
        let endpoint = setting(config, "endpointUrl", "backups.config")?.trim_end_matches('/');
        let (tls, host) = if let Some(host) = endpoint.strip_prefix("https://") {
            (true, host)
        } else if let Some(host) = endpoint.strip_prefix("http://") {
            (false, host)
        } else {
            return Err(BackupError::Settings(format!(
                "backups.config.endpointUrl: {endpoint:?} must start with http:// or https://"
            )));
        };
        if host.is_empty() || host.contains('/') {
            return Err(BackupError::Settings(format!(
                "backups.config.endpointUrl: {endpoint:?} must be http(s)://host[:port] without a path"
            )));
        }
        let http = match config.get("caCertificate") {
            None => shared_client(),
            Some(Value::String(pem)) if tls => client_trusting(pem)?,
            Some(Value::String(_)) => {
                return Err(BackupError::Settings(
                    "backups.config.caCertificate: only used with an https:// endpointUrl".into(),
                ))
            }
            Some(_) => {
                return Err(BackupError::Settings(
                    "backups.config.caCertificate: must be a PEM string".into(),
                ))
            }
        };
        let dest = setting(config, "destinationPath", "backups.config")?;
        let Some(path) = dest.strip_prefix("s3://") else {
            return Err(BackupError::Settings(format!(
                "backups.config.destinationPath: {dest:?} must look like s3://bucket/prefix/"
            )));
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(BackupError::Settings(
                "backups.config.destinationPath: the bucket name is missing".into(),
            ));
        }
        let prefix = prefix.trim_matches('/');
        let access_key_id = setting(config, "accessKey", "backups.config")?.to_owned();
        let secret_access_key = setting(secrets, "secretKey", "backups.secrets")?.to_owned();
        let region = match config.get("region") {
            None => "us-east-1".to_owned(),
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            Some(_) => {
                return Err(BackupError::Settings(
                    "backups.config.region: must be a non-empty string".into(),
                ))
            }
        };
        Ok(Self {
            http,
            endpoint: endpoint.to_owned(),
            host: host.to_owned(),
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            key: S3Key {
                access_key_id,
                secret_access_key,
                region,
            },
        })
    }

    /// The full object key of `rel` under the destination prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Where objects go, for messages: `s3://bucket/prefix/`.
    pub fn describe(&self) -> String {
        format!("s3://{}/{} at {}", self.bucket, self.prefix, self.endpoint)
    }

    fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let path = if key.is_empty() {
            format!("/{}", self.bucket)
        } else {
            format!("/{}/{key}", self.bucket)
        };
        let mut url = format!("{}{}", self.endpoint, uri_encode(&path, true));
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &query
                    .iter()
                    .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        }
        let headers = sign(
            &self.key,
            method.as_str(),
            &self.host,
            &path,
            query,
            UNSIGNED,
            OffsetDateTime::now_utc(),
        );
        let mut req = self.http.request(method, url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req
    }

    /// A request that got no answer, with every cause: reqwest's own message ("error sending
    /// request") hides the one that matters (refused, timed out, certificate not trusted).
    fn unreachable(&self, what: &str, e: &reqwest::Error) -> BackupError {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            why.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        BackupError::Store(format!("{what}: {} unreachable: {why}", self.endpoint))
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(what, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(BackupError::Store(format!(
            "{what}: {}",
            s3_error(status, &body)
        )))
    }

    /// Uploads one object with `Content-MD5`, then reads its size and ETag back.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<ObjectInfo> {
        let digest = Md5::digest(&body);
        let md5 = hex(&digest);
        let size = body.len() as u64;
        let crc32 = crc32fast::hash(&body);
        let req = self
            .request(reqwest::Method::PUT, key, &[])
            .header(
                "content-md5",
                base64::engine::general_purpose::STANDARD.encode(digest),
            )
            .body(body);
        self.send(req, &format!("uploading {key}")).await?;
        let info = ObjectInfo {
            key: key.to_owned(),
            size,
            md5,
            part_size: None,
            crc32: Some(crc32),
        };
        self.verify(&info).await?;
        Ok(info)
    }

    /// Reads an object's size and ETag back and compares them with what was sent.
    pub async fn verify(&self, info: &ObjectInfo) -> Result<()> {
        let Some((size, etag)) = self.head(&info.key).await? else {
            return Err(BackupError::Verify(format!(
                "{} is missing right after its upload",
                info.key
            )));
        };
        if size != info.size {
            return Err(BackupError::Verify(format!(
                "{}: the store holds {size} bytes, {} were sent",
                info.key, info.size
            )));
        }
        if etag != info.md5 {
            return Err(BackupError::Verify(format!(
                "{}: the store's checksum {etag} differs from the upload's {}",
                info.key, info.md5
            )));
        }
        Ok(())
    }

    /// Size and ETag (unquoted) of an object, `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<(u64, String)>> {
        let resp = self
            .request(reqwest::Method::HEAD, key, &[])
            .send()
            .await
            .map_err(|e| self.unreachable(&format!("reading {key}"), &e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(BackupError::Store(format!(
                "reading {key}: {}",
                s3_error(resp.status(), "")
            )));
        }
        let size = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(Some((size, etag_of(&resp))))
    }

    /// The whole object in memory (small ones: manifests, WAL segments), `None` when missing.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut resp) = self.open(key).await? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| BackupError::Store(format!("downloading {key}: {e}")))?
        {
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Starts a download; read it with `chunk()`. `None` when the object does not exist.
    pub async fn open(&self, key: &str) -> Result<Option<reqwest::Response>> {
        let resp = self
            .request(reqwest::Method::GET, key, &[])
            .send()
            .await
            .map_err(|e| self.unreachable(&format!("downloading {key}"), &e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(BackupError::Store(format!(
                "downloading {key}: {}",
                s3_error(status, &body)
            )));
        }
        Ok(Some(resp))
    }

    /// Every object under `prefix` (a full key prefix), with its size, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let resp = self
                .send(
                    self.request(reqwest::Method::GET, "", &query),
                    &format!("listing {prefix}"),
                )
                .await?;
            let body = resp
                .text()
                .await
                .map_err(|e| BackupError::Store(format!("listing {prefix}: {e}")))?;
            for item in xml_all(&body, "Contents") {
                if let Some(key) = xml_one(&item, "Key") {
                    let size = xml_one(&item, "Size")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    out.push((key, size));
                }
            }
            match (
                xml_one(&body, "IsTruncated").as_deref(),
                xml_one(&body, "NextContinuationToken"),
            ) {
                (Some("true"), Some(next)) => token = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes one object; a missing one counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.send(
            self.request(reqwest::Method::DELETE, key, &[]),
            &format!("deleting {key}"),
        )
        .await?;
        Ok(())
    }

    /// Starts a multipart upload of `key`.
    pub async fn upload(&self, key: &str) -> Result<Upload> {
        let resp = self
            .send(
                self.request(reqwest::Method::POST, key, &[("uploads", "")]),
                &format!("starting the upload of {key}"),
            )
            .await?;
        let body = resp.text().await.unwrap_or_default();
        let upload_id = xml_one(&body, "UploadId").ok_or_else(|| {
            BackupError::Store(format!(
                "starting the upload of {key}: no UploadId in {body}"
            ))
        })?;
        Ok(Upload {
            bucket: self.clone(),
            key: key.to_owned(),
            upload_id,
            in_flight: Default::default(),
            done: Vec::new(),
            crc32: crc32fast::Hasher::new(),
            size: 0,
            part_size: 0,
        })
    }
}

/// A multipart upload under way: parts go up two at a time (each hashed and checked on its own),
/// so hashing one overlaps with sending the other.
pub struct Upload {
    bucket: Bucket,
    key: String,
    upload_id: String,
    /// Parts sent or being sent, in order; each answers its MD5 (and CRC-32) once the store
    /// has it.
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<Result<Part>>>,
    done: Vec<[u8; 16]>,
    /// CRC-32 of the parts done so far, in order.
    crc32: crc32fast::Hasher,
    size: u64,
    part_size: u64,
}

/// A part the store took: its MD5 (checked against the store's ETag) and CRC-32.
struct Part {
    md5: [u8; 16],
    crc32: crc32fast::Hasher,
}

/// Parts in flight at once.
const IN_FLIGHT: usize = 2;

/// The ETag S3 gives a multipart object: the MD5 of its parts' MD5s, then `-` and their count.
/// What Berth records as the checksum of such an object (with the part size, to recompute it).
pub fn multipart_etag(parts: &[[u8; 16]]) -> String {
    let mut all = Vec::with_capacity(parts.len() * 16);
    for p in parts {
        all.extend_from_slice(p);
    }
    format!("{}-{}", hex(&Md5::digest(&all)), parts.len())
}

impl Upload {
    /// Queues the next part (every part but the last must be at least 5 MiB, all but the last
    /// of the same size); waits while [`IN_FLIGHT`] are under way.
    pub async fn part(&mut self, body: Vec<u8>) -> Result<()> {
        if self.in_flight.len() >= IN_FLIGHT {
            let oldest = self.in_flight.pop_front().expect("a part in flight");
            self.take(joined(oldest).await?);
        }
        if self.size == 0 {
            self.part_size = body.len() as u64;
        }
        self.size += body.len() as u64;
        let number = (self.done.len() + self.in_flight.len() + 1).to_string();
        let (bucket, key, upload_id) = (
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        self.in_flight.push_back(tokio::spawn(async move {
            // Hashing 32 MiB takes tens of milliseconds: off the runtime's workers.
            let (digest, crc32, body) = tokio::task::spawn_blocking(move || {
                let digest: [u8; 16] = Md5::digest(&body).into();
                let mut crc32 = crc32fast::Hasher::new();
                crc32.update(&body);
                (digest, crc32, body)
            })
            .await
            .map_err(|e| BackupError::Engine(format!("hashing a part: {e}")))?;
            let md5 = hex(&digest);
            let req = bucket
                .request(
                    reqwest::Method::PUT,
                    &key,
                    &[("partNumber", &number), ("uploadId", &upload_id)],
                )
                .header(
                    "content-md5",
                    base64::engine::general_purpose::STANDARD.encode(digest),
                )
                .body(body);
            let resp = bucket
                .send(req, &format!("uploading part {number} of {key}"))
                .await?;
            let etag = etag_of(&resp);
            if etag != md5 {
                return Err(BackupError::Verify(format!(
                    "part {number} of {key}: the store's checksum {etag:?} differs from the upload's {md5}"
                )));
            }
            Ok(Part {
                md5: digest,
                crc32,
            })
        }));
        Ok(())
    }

    fn take(&mut self, part: Part) {
        self.done.push(part.md5);
        self.crc32.combine(&part.crc32);
    }

    /// Waits for the parts, completes the upload and reads the object's size and ETag back.
    pub async fn finish(mut self) -> Result<ObjectInfo> {
        while let Some(part) = self.in_flight.pop_front() {
            let part = joined(part).await?;
            self.take(part);
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, digest) in self.done.iter().enumerate() {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag></Part>",
                i + 1,
                hex(digest)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let resp = self
            .bucket
            .send(
                self.bucket
                    .request(
                        reqwest::Method::POST,
                        &self.key,
                        &[("uploadId", &self.upload_id)],
                    )
                    .body(xml),
                &format!("completing the upload of {}", self.key),
            )
            .await?;
        // S3 may answer 200 with an error document when completing.
        let body = resp.text().await.unwrap_or_default();
        if body.contains("<Error>") {
            return Err(BackupError::Store(format!(
                "completing the upload of {}: {}",
                self.key,
                s3_error(reqwest::StatusCode::OK, &body)
            )));
        }
        let info = ObjectInfo {
            key: self.key.clone(),
            size: self.size,
            md5: multipart_etag(&self.done),
            part_size: Some(self.part_size),
            crc32: Some(self.crc32.clone().finalize()),
        };
        self.bucket.verify(&info).await?;
        Ok(info)
    }

    /// Gives up: the parts sent so far are dropped by the store.
    pub async fn abort(mut self) {
        while let Some(part) = self.in_flight.pop_front() {
            part.abort();
        }
        let _ = self
            .bucket
            .send(
                self.bucket.request(
                    reqwest::Method::DELETE,
                    &self.key,
                    &[("uploadId", &self.upload_id)],
                ),
                "aborting an upload",
            )
            .await;
    }
}

async fn joined(part: tokio::task::JoinHandle<Result<Part>>) -> Result<Part> {
    part.await
        .map_err(|e| BackupError::Engine(format!("uploading a part: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> JsonMap {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn settings_are_checked_field_by_field() {
        let secrets = map(json!({"secretKey": "s"}));
        let ok = map(
            json!({"endpointUrl": "http://127.0.0.1:3900/", "destinationPath": "s3://b/p/q/", "accessKey": "k"}),
        );
        let b = Bucket::from_settings(&ok, &secrets).unwrap();
        assert_eq!(b.key("x"), "p/q/x");
        assert_eq!(b.host, "127.0.0.1:3900");
        for (config, field) in [
            (
                json!({"destinationPath": "s3://b/", "accessKey": "k"}),
                "endpointUrl: is required",
            ),
            (
                json!({"endpointUrl": "ftp://x", "destinationPath": "s3://b/", "accessKey": "k"}),
                "must start with http:// or https://",
            ),
            (
                json!({"endpointUrl": "http://x", "destinationPath": "b/", "accessKey": "k"}),
                "s3://bucket/prefix/",
            ),
            (
                json!({"endpointUrl": "http://x", "destinationPath": "s3:///p", "accessKey": "k"}),
                "bucket name is missing",
            ),
            (
                json!({"endpointUrl": "http://x", "destinationPath": "s3://b", "accessKey": 3}),
                "accessKey: must be a non-empty string",
            ),
            (
                json!({"endpointUrl": "http://x", "destinationPath": "s3://b", "accessKey": "k", "caCertificate": "x"}),
                "caCertificate: only used with an https:// endpointUrl",
            ),
            (
                json!({"endpointUrl": "https://x", "destinationPath": "s3://b", "accessKey": "k", "caCertificate": "no pem here"}),
                "caCertificate: holds no PEM certificate",
            ),
        ] {
            let e = Bucket::from_settings(&map(config), &secrets)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
        }
        let e = Bucket::from_settings(&ok, &JsonMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("backups.secrets.secretKey: is required"), "{e}");
    }

    #[test]
    fn xml_answers_are_read() {
        let body = "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a&amp;b</Key><Size>3</Size></Contents><Contents><Key>c</Key><Size>10</Size></Contents></ListBucketResult>";
        assert_eq!(xml_all(body, "Key"), ["a&b", "c"]);
        assert_eq!(xml_one(body, "IsTruncated").as_deref(), Some("false"));
        assert_eq!(
            s3_error(
                reqwest::StatusCode::FORBIDDEN,
                "<Error><Code>InvalidAccessKeyId</Code><Message>no such key</Message></Error>"
            ),
            "403 InvalidAccessKeyId: no such key"
        );
    }
}
