//! The JWT signing key. It comes from `SPARC_JWT_SECRET`; in the embedded mode, when unset, a
//! random key is generated on first start and kept in `jwt.key` beside the database file (mode
//! 0600) so tokens survive restarts. With Postgres an unset key is an error: several nodes must
//! share one key, so generating one per node would silently break logins.

use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::{Secret, Settings};

/// Why no signing key could be found.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Production without a key.
    #[error(
        "SPARC_JWT_SECRET is not set: with a Postgres database every node must share one signing key; \
         set SPARC_JWT_SECRET to a long random string (e.g. `openssl rand -hex 32`)"
    )]
    MissingForPostgres,
    /// The key file could not be read or written.
    #[error("could not use the key file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A configured key that is too short to be safe.
    #[error("SPARC_JWT_SECRET must be at least 32 characters")]
    TooShort,
}

/// The directory of a `sqlite://` database file.
fn database_dir(database_url: &str) -> PathBuf {
    let path = database_url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    Path::new(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The signing key for these settings.
pub fn signing_key(settings: &Settings) -> Result<Secret, KeyError> {
    if let Some(secret) = &settings.jwt_secret {
        if secret.expose().len() < 32 {
            return Err(KeyError::TooShort);
        }
        return Ok(secret.clone());
    }
    if !settings.is_embedded() {
        return Err(KeyError::MissingForPostgres);
    }
    let dir = database_dir(settings.database_url.expose());
    let path = dir.join("jwt.key");
    let file_error = |source| KeyError::File {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(key) if key.trim().len() >= 32 => return Ok(Secret::new(key.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(e)),
    }
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dir).map_err(file_error)?;
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = hex::encode(bytes);
    write_private(&path, &key).map_err(file_error)?;
    tracing::info!(path = %path.display(), "generated a JWT signing key");
    Ok(Secret::new(key))
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_without_a_key_refuses_to_start() {
        let settings = Settings {
            database_url: Secret::new("postgres://localhost/sparc"),
            ..Settings::default()
        };
        assert!(matches!(
            signing_key(&settings),
            Err(KeyError::MissingForPostgres)
        ));
    }

    #[test]
    fn the_embedded_mode_generates_a_key_once_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("sparc-keys-{}", uuid::Uuid::new_v4()));
        let settings = Settings {
            database_url: Secret::new(format!("sqlite://{}/sparc.db", dir.display())),
            ..Settings::default()
        };
        let first = signing_key(&settings).expect("a key should be generated");
        let second = signing_key(&settings).expect("the key should be read back");
        assert_eq!(first, second);
        assert!(first.expose().len() >= 32);
        std::fs::remove_dir_all(dir).ok();
    }
}
