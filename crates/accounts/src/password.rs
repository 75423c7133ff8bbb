//! Password hashing (argon2id) and the password policy of the contract.
//!
//! Hashing is deliberately slow (tens of milliseconds), so both [`hash_password`] and
//! [`verify_password`] run on tokio's blocking pool instead of stalling a runtime worker, at
//! most one per core at a time: a burst of logins then waits in a bounded queue, until its
//! requests' deadlines at most, instead of taking every core from everyone else's requests. A
//! full queue or a passed deadline is [`PasswordError::Overloaded`], answered 503. Hashes
//! are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$…`) with the parameters inside, so raising the
//! cost later does not invalidate stored hashes. The cost of new hashes is a setting
//! ([`HashCost`], OWASP's minimum by default; test suites lower it, as they do with bcrypt
//! rounds elsewhere).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, password_hash};
use sparc_store::overload::{Overloaded, before_deadline, deadline};
use tokio::sync::Semaphore;

/// Why hashing or verifying could not produce an answer (not "wrong password": that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// argon2 refused the input, or the stored hash is not a valid PHC string.
    #[error("password hashing failed: {0}")]
    Hash(password_hash::Error),
    /// The blocking task panicked or was cancelled at shutdown.
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Too many hashes wait already, or the request's deadline passed while it waited.
    #[error("{0}")]
    Overloaded(#[from] Overloaded),
}

/// The cost of a new hash: argon2id memory and passes (one lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory, in KiB (at least 8).
    pub memory_kib: u32,
    /// Passes over it (at least 1).
    pub passes: u32,
}

impl HashCost {
    /// OWASP's minimum for argon2id: 19 MiB, 2 passes.
    pub const OWASP: Self = Self {
        memory_kib: 19_456,
        passes: 2,
    };
}

impl HashCost {
    /// The argon2id hasher of this cost (raised to argon2's minimum where below it).
    fn hasher(self) -> Argon2<'static> {
        let memory = self.memory_kib.max(argon2::Params::MIN_M_COST);
        let passes = self.passes.max(argon2::Params::MIN_T_COST);
        let params = argon2::Params::new(memory, passes, 1, None)
            .expect("at least argon2's minimum memory and passes, one lane");
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
    }
}

/// Hashes waiting for a core, per core, at most.
const WAITING_PER_CORE: usize = 32;

/// At most one hash per core at a time, and a bounded queue for the rest.
struct Gate {
    cores: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Gate {
            cores: Arc::new(Semaphore::new(cores)),
            waiting: AtomicUsize::new(0),
            max_waiting: cores * WAITING_PER_CORE,
        }
    })
}

/// Runs `work` on the blocking pool once a core is free for it.
async fn on_a_core<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
) -> Result<T, PasswordError> {
    let gate = gate();
    if gate.waiting.fetch_add(1, Ordering::Relaxed) >= gate.max_waiting {
        gate.waiting.fetch_sub(1, Ordering::Relaxed);
        return Err(Overloaded::QueueFull.into());
    }
    let permit = before_deadline(deadline(), gate.cores.clone().acquire_owned()).await;
    gate.waiting.fetch_sub(1, Ordering::Relaxed);
    let permit = permit?.expect("the gate is never closed");
    tokio::task::spawn_blocking(move || {
        let _core = permit;
        work()
    })
    .await?
}

/// Hashes `password` with argon2id at `cost` and a fresh random salt.
///
/// # Errors
/// [`PasswordError`] only on an internal failure; callers answer 500.
pub async fn hash_password(password: String, cost: HashCost) -> Result<String, PasswordError> {
    on_a_core(move || hash_blocking(&password, cost)).await
}

fn hash_blocking(password: &str, cost: HashCost) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    cost.hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(PasswordError::Hash)
}

/// Checks `password` against a stored PHC hash; `Ok(false)` on a mismatch.
///
/// Pass `None` when the user does not exist: the password is then checked against a fixed dummy
/// hash of `cost` (what new hashes cost), so an unknown username takes as long as a wrong
/// password and login timing does not tell which usernames exist. The answer is then always
/// `false`.
///
/// # Errors
/// [`PasswordError`] if the stored hash is malformed or the blocking task fails.
pub async fn verify_password(
    password: String,
    hash: Option<String>,
    cost: HashCost,
) -> Result<bool, PasswordError> {
    on_a_core(move || match hash {
        Some(hash) => verify_blocking(&password, &hash),
        None => verify_blocking(&password, &dummy_hash(cost)?).map(|_| false),
    })
    .await
}

fn verify_blocking(password: &str, hash: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(hash).map_err(PasswordError::Hash)?;
    // The parameters come from the stored hash.
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::Password) => Ok(false),
        Err(other) => Err(PasswordError::Hash(other)),
    }
}

/// A hash with the current parameters, computed once, for [`verify_password`]`(_, None)`.
fn dummy_hash(cost: HashCost) -> Result<String, PasswordError> {
    static DUMMIES: Mutex<Vec<(HashCost, String)>> = Mutex::new(Vec::new());
    let known = |dummies: &[(HashCost, String)]| {
        dummies
            .iter()
            .find(|(of, _)| *of == cost)
            .map(|(_, hash)| hash.clone())
    };
    if let Some(hash) = known(&DUMMIES.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(hash);
    }
    let hash = hash_blocking("not a real password; timing equaliser", cost)?;
    let mut dummies = DUMMIES.lock().unwrap_or_else(|e| e.into_inner());
    if known(&dummies).is_none() {
        dummies.push((cost, hash.clone()));
    }
    Ok(hash)
}

/// Shortest accepted password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest accepted password, in characters (bounds the hashing work per request).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// The contract's policy: 8..=128 characters with an uppercase letter, a lowercase letter and a
/// digit.
///
/// # Errors
/// The first rule broken, as a message for a 422 `msg`.
pub fn password_policy(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if length < MIN_PASSWORD_CHARS {
        return Err("Password must be at least 8 characters long");
    }
    if length > MAX_PASSWORD_CHARS {
        return Err("Password must be at most 128 characters long");
    }
    if !password.chars().any(char::is_uppercase) {
        return Err("Password must contain at least one uppercase letter");
    }
    if !password.chars().any(char::is_lowercase) {
        return Err("Password must contain at least one lowercase letter");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        return Err("Password must contain at least one digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash_password("Correct1horse".into(), HashCost::OWASP)
            .await
            .expect("hashing should work");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            verify_password("Correct1horse".into(), Some(hash.clone()), HashCost::OWASP)
                .await
                .expect("verify")
        );
        assert!(
            !verify_password("Correct1Horse".into(), Some(hash), HashCost::OWASP)
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn the_same_password_hashes_differently_each_time() {
        let first = hash_password("Correct1horse".into(), HashCost::OWASP)
            .await
            .expect("hashing should work");
        let second = hash_password("Correct1horse".into(), HashCost::OWASP)
            .await
            .expect("hashing should work");
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn verifying_against_no_hash_is_false() {
        let verified = verify_password("Anything1".into(), None, HashCost::OWASP)
            .await
            .expect("verify");
        assert!(!verified);
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_error_not_a_mismatch() {
        let result = verify_password(
            "Anything1".into(),
            Some("plaintext".into()),
            HashCost::OWASP,
        )
        .await;
        assert!(matches!(result, Err(PasswordError::Hash(_))));
    }

    #[test]
    fn the_policy_accepts_a_password_with_upper_lower_and_digit() {
        assert_eq!(password_policy("Secret123"), Ok(()));
        assert_eq!(password_policy(&format!("Aa1{}", "x".repeat(125))), Ok(()));
    }

    #[test]
    fn the_policy_names_the_first_broken_rule() {
        assert_eq!(
            password_policy("Aa1"),
            Err("Password must be at least 8 characters long")
        );
        assert_eq!(
            password_policy(&format!("Aa1{}", "x".repeat(126))),
            Err("Password must be at most 128 characters long")
        );
        assert_eq!(
            password_policy("secret123"),
            Err("Password must contain at least one uppercase letter")
        );
        assert_eq!(
            password_policy("SECRET123"),
            Err("Password must contain at least one lowercase letter")
        );
        assert_eq!(
            password_policy("SecretSecret"),
            Err("Password must contain at least one digit")
        );
    }

    #[test]
    fn the_policy_counts_characters_not_bytes() {
        // Seven characters, fourteen bytes.
        assert!(password_policy("Ää1ääää").is_err());
        assert_eq!(password_policy("Ää1äääää"), Ok(()));
    }
}
