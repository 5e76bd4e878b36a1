//! SCRAM-SHA-256 verifiers, computed here so a plaintext password never reaches PostgreSQL (whose
//! logs could echo a failing `ALTER ROLE ... PASSWORD 'plain'` statement).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const ITERATIONS: u32 = 4096;

/// `SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`, the form `pg_authid.rolpassword` stores.
pub fn verifier(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    verifier_with_salt(password, &salt)
}

fn verifier_with_salt(password: &str, salt: &[u8]) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, ITERATIONS, &mut salted);
    let hmac = |key: &[u8], msg: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(msg);
        m.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn has_the_shape_postgres_stores() {
        // That PostgreSQL accepts it is proven by the engine tests, which log in with it.
        let v = super::verifier_with_salt("pencil", b"0123456789abcdef");
        assert!(v.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"));
        let parts: Vec<&str> = v.rsplit('$').next().unwrap().split(':').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), 44);
    }
}
