//! Passwords (argon2 hashes) and expiring bearer tokens.
//!
//! A token is 32 random bytes in hex; only its BLAKE3 hash is stored, so a copy of the
//! database does not hold usable tokens.

use std::cell::RefCell;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use hotate_engine::Hash;

use crate::error::ServerError;
use crate::meta::{Metadata, Role, Session, now};

/// How long a token is accepted.
pub const TOKEN_LIFETIME_SECS: i64 = 12 * 3600;

/// Characters a new password needs at least.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Refuses a new password shorter than [`MIN_PASSWORD_CHARS`].
///
/// # Errors
/// `ShortPassword`.
pub fn check_new_password(password: &str) -> Result<(), ServerError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ServerError::ShortPassword {
            min: MIN_PASSWORD_CHARS,
            got: chars,
        });
    }
    Ok(())
}

/// Hashes a password for storage.
///
/// # Errors
/// Only on an internal argon2 failure.
pub fn hash_password(password: &str) -> Result<String, ServerError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .to_string())
}

/// Checks a user's password and issues a token bound to the user and terminal.
///
/// # Errors
/// `BadLogin` for an unknown user or a wrong password.
pub fn login(
    meta: &dyn Metadata,
    user: &str,
    password: &str,
    terminal: &str,
) -> Result<(String, i64), ServerError> {
    let stored = meta.password_hash(user)?;
    // Verify against a dummy hash for unknown users so timing does not reveal them.
    let known = stored.is_some();
    let stored = match stored {
        Some(stored) => stored,
        None => dummy_hash()?,
    };
    let matches = verify_password(password.as_bytes(), &stored)?;
    if !(known && matches) {
        return Err(ServerError::BadLogin);
    }
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expires_at = now() + TOKEN_LIFETIME_SECS;
    let session = Session {
        user: user.to_owned(),
        terminal: terminal.to_owned(),
        role: meta.role(user)?.unwrap_or(Role::Operator),
    };
    meta.add_token(&Hash::of(token.as_bytes()), &session, expires_at)?;
    Ok((token, expires_at))
}

thread_local! {
    /// argon2's working memory (19 MiB with the default parameters), kept by each thread
    /// that checks passwords: allocating it per check makes the allocator keep a copy per
    /// thread and per check that it never returns.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Whether `password` matches a stored PHC hash, computed in this thread's kept memory.
fn verify_password(password: &[u8], stored: &str) -> Result<bool, ServerError> {
    let internal = |e: &dyn std::fmt::Display| ServerError::Internal(format!("password hash: {e}"));
    let parsed = PasswordHash::new(stored).map_err(|e| internal(&e))?;
    let params = Params::try_from(&parsed).map_err(|e| internal(&e))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| internal(&e))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| internal(&e))?,
        None => Version::default(),
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(internal(&"no salt or hash"));
    };
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| internal(&e))?;
    let mut out = vec![0u8; expected.len()];
    ARGON2_MEMORY
        .with_borrow_mut(|memory| {
            memory.resize(params.block_count(), Block::new());
            Argon2::new(algorithm, version, params).hash_password_into_with_memory(
                password,
                salt,
                &mut out,
                &mut memory[..],
            )
        })
        .map_err(|e| internal(&e))?;
    // Constant time: every byte is compared.
    let differ = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(differ == 0 && out.len() == expected.len())
}

fn dummy_hash() -> Result<String, ServerError> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash.clone());
    }
    let hash = hash_password("hotate-dummy")?;
    Ok(DUMMY.get_or_init(|| hash).clone())
}

/// The session of a token.
///
/// # Errors
/// `Unauthenticated` for a missing, unknown or expired token.
pub fn session(meta: &dyn Metadata, token: Option<&str>) -> Result<Session, ServerError> {
    let token = token.ok_or(ServerError::Unauthenticated)?;
    meta.session(&Hash::of(token.as_bytes()))?
        .ok_or(ServerError::Unauthenticated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Accounts;

    #[test]
    fn passwords_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::meta::SqliteMeta::open(&dir.path().join("m.sqlite")).unwrap();
        meta.add_user("coadmin", &hash_password("secret").unwrap(), None)
            .unwrap();
        assert!(matches!(
            login(&meta, "coadmin", "wrong", "PC-1"),
            Err(ServerError::BadLogin)
        ));
        assert!(matches!(
            login(&meta, "nobody", "secret", "PC-1"),
            Err(ServerError::BadLogin)
        ));
        let (token, _) = login(&meta, "coadmin", "secret", "PC-1").unwrap();
        let s = session(&meta, Some(&token)).unwrap();
        assert_eq!((s.user.as_str(), s.terminal.as_str()), ("coadmin", "PC-1"));
        assert!(session(&meta, Some("forged")).is_err());
        assert!(session(&meta, None).is_err());
        assert!(
            !meta
                .password_hash("coadmin")
                .unwrap()
                .unwrap()
                .contains("secret")
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::meta::SqliteMeta::open(&dir.path().join("m.sqlite")).unwrap();
        meta.add_user("coadmin", &hash_password("secret").unwrap(), None)
            .unwrap();
        let session_of = Session {
            user: "coadmin".into(),
            terminal: "PC-1".into(),
            role: Role::Admin,
        };
        meta.add_token(&Hash::of(b"old"), &session_of, now() - 1)
            .unwrap();
        meta.add_token(&Hash::of(b"fresh"), &session_of, now() + 60)
            .unwrap();
        assert!(matches!(
            session(&meta, Some("old")),
            Err(ServerError::Unauthenticated)
        ));
        assert_eq!(session(&meta, Some("fresh")).unwrap(), session_of);
    }
}
