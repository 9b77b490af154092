//! Files of the data directory: created private (0700 for the directory,
//! 0600 for secrets), whole or not at all.

use std::io::Write;
use std::path::Path;

use courier_turn::TurnSecrets;

const TURN_SECRET_FILE_NAME: &str = "turn-secret";

/// The TURN secret kept in the data directory (created on first use), so
/// that credentials outlive a restart.
pub fn turn_secret(data_dir: &Path) -> Result<TurnSecrets, String> {
    let path = data_dir.join(TURN_SECRET_FILE_NAME);
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(data_dir)
                .map_err(|error| format!("cannot create the data directory {}: {error}", data_dir.display()))?;
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let secret = courier_common::text::hex(&bytes);
            match write_private(&path, &secret) {
                Ok(()) => secret,
                // Another process on the same data directory made it first.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?
                    .trim()
                    .to_owned(),
                Err(error) => return Err(format!("cannot write {}: {error}", path.display())),
            }
        }
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    TurnSecrets::new(vec![secret]).map_err(|error| format!("{}: {error}", path.display()))
}

/// Writes `text` to a new file at `path` (mode 0600) whole or not at all:
/// a concurrent reader never sees it half-written, and an existing file is
/// left alone (AlreadyExists).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let staging = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&staging).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&staging, path));
    let _ = std::fs::remove_file(&staging);
    linked
}

pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_turn_secret_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = turn_secret(&data).unwrap();
        let again = turn_secret(&data).unwrap();
        assert_eq!(first.issue("a", 1), again.issue("a", 1), "the same secret after a restart");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(TURN_SECRET_FILE_NAME)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
