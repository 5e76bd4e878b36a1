//! Secrets at rest: XChaCha20-Poly1305 with a 256-bit master key.
//!
//! The key lives in a file created on first start with mode 0600 (or the file named by
//! `BERTH_MASTER_KEY_FILE`). A key file that others can read is refused, as Garage does: a leaked
//! key makes the encryption worthless. The service id is the associated data, so a sealed blob
//! cannot be moved to another service.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Why a master key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or create the master key file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("master key file {0} is readable by other users; chmod 600 it")]
    TooOpen(String),
    #[error("master key file {0} must hold 64 hex characters")]
    Malformed(String),
}

/// The 32-byte master key.
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// Loads the key from `path`, creating it (0600, random) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(KeyError::TooOpen(path.display().to_string()));
                }
                let text = std::fs::read_to_string(path).map_err(io)?;
                Self::from_hex(text.trim())
                    .ok_or_else(|| KeyError::Malformed(path.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
                f.write_all(hex.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(Self(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(key))
    }

    /// A key for tests.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// Seals and opens secrets with the master key.
pub struct Cipher(XChaCha20Poly1305);

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    pub fn new(key: &MasterKey) -> Self {
        Self(XChaCha20Poly1305::new((&key.0).into()))
    }

    /// `nonce (24 bytes) || ciphertext`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        let ct = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_binds_the_aad() {
        let c = Cipher::new(&MasterKey::random());
        let sealed = c.seal(b"hunter2hunter2", b"svc-a");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(c.open(&sealed, b"svc-a").unwrap(), b"hunter2hunter2");
        assert!(c.open(&sealed, b"svc-b").is_none());
        let other = Cipher::new(&MasterKey::random());
        assert!(other.open(&sealed, b"svc-a").is_none());
    }

    #[test]
    fn key_file_is_created_private_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let k1 = MasterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let k2 = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(k1.0, k2.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&path),
            Err(KeyError::TooOpen(_))
        ));
    }
}
