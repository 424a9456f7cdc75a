//! The `--acme-cache` directory: the ACME account and the issued certificate, so that a
//! restart neither registers again nor orders a certificate it already has.
//!
//! Files (the directory is created mode 0700, each file written mode 0600 to a temporary name
//! and renamed into place, so a crash never leaves half a file):
//! - `account-<D>.json`: the account's id and private key for the directory URL whose SHA-256
//!   starts with the hex `D`;
//! - `certificate-<D>-<N>.pem`: the certificate's private key, then its chain (leaf first),
//!   for that directory and the set of names whose SHA-256 starts with `N`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The cache files of one directory URL and one set of names.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    account: PathBuf,
    certificate: PathBuf,
}

impl Cache {
    /// Creates `dir` if needed (mode 0700) and names the files for `directory_url` and
    /// `domains` (in any order).
    pub(crate) fn open(
        dir: &Path,
        directory_url: &str,
        domains: &[String],
    ) -> std::io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut names: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        let d = short_hash(directory_url);
        let n = short_hash(&names.join("\n"));
        Ok(Self {
            account: dir.join(format!("account-{d}.json")),
            certificate: dir.join(format!("certificate-{d}-{n}.pem")),
        })
    }

    /// The cached account, as the ACME client serialised it; `None` if there is none.
    pub(crate) fn account(&self) -> std::io::Result<Option<String>> {
        read_if_present(&self.account)
    }

    pub(crate) fn store_account(&self, json: &str) -> std::io::Result<()> {
        write_private(&self.account, json)
    }

    /// The cached key and chain (PEM); `None` if there is none.
    pub(crate) fn certificate(&self) -> std::io::Result<Option<String>> {
        read_if_present(&self.certificate)
    }

    pub(crate) fn store_certificate(&self, pem: &str) -> std::io::Result<()> {
        write_private(&self.certificate, pem)
    }

    /// Forgets the account (the CA no longer knows it: a new one is registered).
    pub(crate) fn remove_account(&self) -> std::io::Result<()> {
        match fs::remove_file(&self.account) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The certificate file (for logs).
    pub(crate) fn certificate_path(&self) -> &Path {
        &self.certificate
    }
}

fn read_if_present(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `text` to `path` readable by the owner only, replacing it in one rename.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut staging = path.as_os_str().to_owned();
    staging.push(".new");
    let staging = PathBuf::from(staging);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&staging, path)
}

/// The first 8 bytes of the SHA-256 of `text`, in hex.
fn short_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_are_private_keyed_by_directory_and_names_and_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("acme");
        let names = vec!["b.example".to_owned(), "A.example".to_owned()];
        let cache = Cache::open(&dir, "https://ca.test/dir", &names).unwrap();
        assert_eq!(cache.account().unwrap(), None);
        assert_eq!(cache.certificate().unwrap(), None);
        cache.store_account("{}").unwrap();
        cache.store_certificate("PEM").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&cache.account), 0o600);
        assert_eq!(mode(cache.certificate_path()), 0o600);

        // The same names in another order and case: the same files.
        let again = vec!["a.example".to_owned(), "b.example".to_owned()];
        let reopened = Cache::open(&dir, "https://ca.test/dir", &again).unwrap();
        assert_eq!(reopened.account().unwrap().as_deref(), Some("{}"));
        assert_eq!(reopened.certificate().unwrap().as_deref(), Some("PEM"));

        // Another CA or other names: other files.
        let other_ca = Cache::open(&dir, "https://other.test/dir", &again).unwrap();
        assert_eq!(other_ca.account().unwrap(), None);
        let other_names = Cache::open(&dir, "https://ca.test/dir", &names[..1]).unwrap();
        assert_eq!(other_names.certificate().unwrap(), None);
        assert_eq!(other_names.account().unwrap().as_deref(), Some("{}"));

        reopened.remove_account().unwrap();
        reopened.remove_account().unwrap();
        assert_eq!(cache.account().unwrap(), None);
    }
}
